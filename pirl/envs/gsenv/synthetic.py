"""A synthetic GSEnv asset folder, for tests and CPU runs where the real captures
(RLinf/gsenv-assets-v0) are not at hand.

It has every file the real folder has, made here: ManiSkill's own Panda URDF and meshes
(shipped with mani-skill) as the robot, splats sampled on each link's visual mesh at the
default joint configuration (coloured from the mesh's texture, flat discs along the surface
normal), a 4 cm red cube and a plate as OBJ meshes with their splats, a wooden table of
splats, a background image and a gsenv_assets.yaml naming the robot files. Its splats are
exactly aligned with the meshes (no offsets), so SAPIEN's render of the meshes and the
splat render of the same state coincide.

    python -m pirl.envs.gsenv.synthetic OUT_DIR [--seed 0]
"""
from __future__ import annotations

import argparse
import math
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml

from pirl.envs.gsenv.assets import DEFAULT_QPOS, MANIFEST, parse_urdf
from pirl.envs.gsenv.robot import link_poses
from pirl.envs.gsenv.splats import Splats, rgb_to_sh0, save_ply

ROBOT_DIR = "robot/panda"
CUBE_SIZE = 0.04  # m, side
PLATE_RADIUS, PLATE_HEIGHT = 0.09, 0.012  # m
TABLE_EXTENT = ((-0.3, 1.1), (-0.6, 0.6))  # (x range, y range) of the table splats, m
BACKGROUND_SIZE = (640, 480)
SIGMA = {"robot": 0.008, "cube": 0.004, "plate": 0.006, "table": 0.012}  # splat radius (std), m
FLATNESS = 0.3  # disc thickness / radius


def _panda_source() -> Path:
    import mani_skill

    return Path(mani_skill.__file__).parent / "assets" / "robots" / "panda"


def _rpy_matrix(rpy: list[float]) -> np.ndarray:
    """URDF origin rpy (fixed-axis roll, pitch, yaw) -> R = Rz(yaw) Ry(pitch) Rx(roll)."""
    r, p, y = rpy
    rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _link_visuals(urdf: Path) -> dict[str, list[tuple[Path, np.ndarray]]]:
    """link -> [(mesh file, (4, 4) visual origin in the link frame)] of a URDF."""
    out: dict[str, list[tuple[Path, np.ndarray]]] = {}
    for link in ET.parse(urdf).getroot().findall("link"):
        for vis in link.findall("visual"):
            mesh = vis.find("geometry/mesh")
            if mesh is None:
                continue
            t = np.eye(4)
            origin = vis.find("origin")
            if origin is not None:
                t[:3, :3] = _rpy_matrix([float(v) for v in origin.get("rpy", "0 0 0").split()])
                t[:3, 3] = [float(v) for v in origin.get("xyz", "0 0 0").split()]
            out.setdefault(link.get("name", ""), []).append((urdf.parent / mesh.get("filename", ""), t))
    return out


def _quat_z_to(normals: np.ndarray) -> np.ndarray:
    """(N, 3) unit normals -> (N, 4) quaternions (w, x, y, z) turning +z onto them."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, normals)
    w = 1.0 + normals @ z
    q = np.concatenate([w[:, None], axis], axis=1)
    flip = w < 1e-8  # normal = -z: half turn about x
    q[flip] = [0.0, 1.0, 0.0, 0.0]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def surface_splats(mesh, sigma: float, rng: np.random.Generator, rgb: Sequence[float] | None = None,
                   transform: np.ndarray | None = None, opacity: float = 0.9, sh_degree: int = 0) -> Splats:
    """Flat splats covering a trimesh surface (one per (1.5 σ)² of area), coloured from the
    mesh (vertex colours or texture) unless `rgb` is given, moved by `transform` (4, 4)."""
    import trimesh

    n = max(8, int(mesh.area / (1.5 * sigma) ** 2))
    points, faces = trimesh.sample.sample_surface(mesh, n, seed=int(rng.integers(2**31)))
    normals = mesh.face_normals[faces]
    if rgb is None:
        # one colour for the whole mesh comes back 1-D
        vc = np.atleast_2d(np.asarray(mesh.visual.to_color().vertex_colors, dtype=np.float64))
        vertex_rgb = np.broadcast_to(vc[:, :3], (len(mesh.vertices), 3)) / 255.0
        color = vertex_rgb[mesh.faces[faces]].mean(axis=1)
    else:
        color = np.broadcast_to(np.asarray(rgb, dtype=np.float64), (n, 3))
    color = np.clip(color + rng.normal(0.0, 0.02, size=(n, 3)), 0.0, 1.0)
    if transform is not None:
        points = points @ transform[:3, :3].T + transform[:3, 3]
        normals = normals @ transform[:3, :3].T
    k = (sh_degree + 1) ** 2
    sh = np.zeros((n, k, 3))
    sh[:, 0] = rgb_to_sh0(torch.from_numpy(color)).numpy()
    sh[:, 1:] = rng.normal(0.0, 0.05, size=(n, k - 1, 3))  # a little view dependence
    scales = np.tile([sigma, sigma, sigma * FLATNESS], (n, 1))
    return Splats(means=torch.from_numpy(points).float(), quats=torch.from_numpy(_quat_z_to(normals)).float(),
                  scales=torch.from_numpy(scales).float(), opacities=torch.full((n,), opacity),
                  sh=torch.from_numpy(sh).float())


def _write_robot(root: Path, rng: np.random.Generator) -> None:
    import trimesh

    src, dst = _panda_source(), root / ROBOT_DIR
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("panda_v2.urdf", "panda_v2.srdf"):
        shutil.copy(src / name, dst / name)
    shutil.copytree(src / "franka_description" / "meshes", dst / "franka_description" / "meshes", dirs_exist_ok=True)
    urdf = parse_urdf(dst / "panda_v2.urdf")
    visuals = _link_visuals(urdf.path)
    links = sorted(visuals)
    poses = link_poses(urdf, DEFAULT_QPOS, links).numpy()  # robot base at the world origin
    for link, pose in zip(links, poses):
        parts = [surface_splats(trimesh.load(str(f), force="mesh"), SIGMA["robot"], rng, transform=pose @ t)
                 for f, t in visuals[link]]
        s = parts[0] if len(parts) == 1 else Splats(*(torch.cat(x) for x in zip(
            *((p.means, p.quats, p.scales, p.opacities, p.sh) for p in parts))))
        save_ply(dst / "parts" / f"{link}_3dgs_abs.ply", s)


def _write_objects(root: Path, rng: np.random.Generator) -> None:
    import trimesh

    cube = trimesh.creation.box(extents=(CUBE_SIZE,) * 3)
    plate = trimesh.creation.cylinder(radius=PLATE_RADIUS, height=PLATE_HEIGHT, sections=48)
    for name, mesh, rgb, degree in (("cube", cube, (0.85, 0.12, 0.1), 1), ("plate", plate, (0.9, 0.92, 0.95), 0)):
        folder = root / "object" / name
        folder.mkdir(parents=True, exist_ok=True)
        mesh.export(folder / "mesh_w_vertex_color_abs.obj")
        save_ply(folder / "object_3dgs_abs.ply", surface_splats(mesh, SIGMA[name], rng, rgb=rgb, sh_degree=degree))


def _write_table(root: Path, rng: np.random.Generator) -> None:
    sigma = SIGMA["table"]
    (x0, x1), (y0, y1) = TABLE_EXTENT
    xs, ys = np.meshgrid(np.arange(x0, x1, 1.2 * sigma), np.arange(y0, y1, 1.2 * sigma), indexing="ij")
    n = xs.size
    means = np.stack([xs.ravel(), ys.ravel(), np.zeros(n)], 1) + rng.normal(0, 0.2 * sigma, (n, 3)) * [1, 1, 0]
    grain = 0.5 + 0.5 * np.sin(means[:, 0] * 40.0 + 3.0 * np.sin(means[:, 1] * 7.0))  # wood-like stripes
    rgb = np.stack([0.55 + 0.15 * grain, 0.38 + 0.1 * grain, 0.22 + 0.05 * grain], 1)
    table = Splats(means=torch.from_numpy(means).float(), quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                   scales=torch.tensor([[sigma, sigma, sigma * FLATNESS]]).repeat(n, 1),
                   opacities=torch.full((n,), 0.95), sh=rgb_to_sh0(torch.from_numpy(rgb)).float()[:, None])
    save_ply(root / "object" / "table" / "table_abs.ply", table)


def _write_background(root: Path) -> None:
    from PIL import Image

    w, h = BACKGROUND_SIZE
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    img = (1 - t) * np.array([0.55, 0.62, 0.55]) + t * np.array([0.30, 0.36, 0.30])
    img = np.broadcast_to(img, (h, w, 3))
    path = root / "background" / "background_image" / "green_background.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).astype(np.uint8)).save(path, quality=95)


def write_synthetic_assets(root: str | Path, seed: int = 0) -> Path:
    """Write a complete synthetic asset folder at `root`; returns its path."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    _write_robot(root, rng)
    _write_objects(root, rng)
    _write_table(root, rng)
    _write_background(root)
    manifest = {
        "robot": {"urdf": f"{ROBOT_DIR}/panda_v2.urdf", "splats": f"{ROBOT_DIR}/parts", "offset": [0.0, 0.0, 0.0]},
        "objects": {name: {"center": False, "offset": [0.0, 0.0, 0.0], "scale": [1.0, 1.0, 1.0]}
                    for name in ("cube", "plate")},
    }
    (root / MANIFEST).write_text("# Synthetic GSEnv assets (pirl.envs.gsenv.synthetic): splats aligned with the meshes.\n"
                                 + yaml.safe_dump(manifest, sort_keys=False))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder to write (created)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(write_synthetic_assets(args.out, args.seed))


if __name__ == "__main__":
    main()
