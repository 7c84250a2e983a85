"""The GSEnv asset folder (`env.<split>.init_params.assets_path`): where each file is, its
alignment, and the checks that name a missing file before anything is built.

Default layout: the RLinf/gsenv-assets-v0 folder as ManiSkill-GS reads it
(mani_skill_gs/env_simulation/ms_configs.py), so a downloaded copy works as it is:

    robot/my_franka/fr3_wristcam.urdf          robot URDF (+ the meshes it references)
    robot/my_franka/parts/<link>_3dgs_abs.ply  splats of each rendered link, captured in the
                                               world at the default joint configuration
    object/cube/mesh_w_vertex_color_abs.obj    cube mesh (visual and convex collision)
    object/cube/object_3dgs_abs.ply            cube splats
    object/plate/...                           the same for the plate
    object/table/table_abs.ply                 table splats, in the world
    background/background_image/green_background.jpg

A `gsenv_assets.yaml` in the folder overrides any entry of DEFAULT_MANIFEST (paths relative
to the folder). Alignment, as ManiSkill-GS applies it: robot splats are shifted by
`robot.offset` (world) before being attached to their links; object splats are centred on
their mean (`center`), scaled per axis (`scale`) and shifted (`offset`) in the object's frame;
table splats are shifted by `table.offset`. Links without a splat file are not rendered
(ManiSkill-GS renders none for link8, the TCP, the finger pads and the camera).

Pure Python (no torch), so config validation can call `check_assets`.
"""
from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MANIFEST = "gsenv_assets.yaml"
OBJECTS = ("cube", "plate")
# Franka joint configuration the robot splats were captured at (ManiSkill-GS FR3_DEFAULT_CFG):
# 7 arm joints, then the two finger joints (open, 0.04 m).
DEFAULT_QPOS = (0.0, 2.59358403e-01, 0.0, -2.28914773e00, 0.0, 2.51473323e00, 7.85539902e-01, 0.04, 0.04)

DEFAULT_MANIFEST: dict[str, Any] = {
    "robot": {
        "urdf": "robot/my_franka/fr3_wristcam.urdf",
        "splats": "robot/my_franka/parts",
        "splat_suffix": "_3dgs_abs.ply",
        "offset": [0.0, 0.0, 0.02],
        "ee_link": None,  # null: the one link whose name ends in "hand_tcp"
        "default_qpos": list(DEFAULT_QPOS),
    },
    "objects": {
        "cube": {"mesh": "object/cube/mesh_w_vertex_color_abs.obj", "splats": "object/cube/object_3dgs_abs.ply",
                 "center": True, "offset": [0.0, 0.0, 0.0], "scale": [1.0, 1.0, 1.0]},
        "plate": {"mesh": "object/plate/mesh_w_vertex_color_abs.obj", "splats": "object/plate/object_3dgs_abs.ply",
                  "center": True, "offset": [-0.005, -0.005, 0.0], "scale": [0.96, 1.0, 0.96]},
    },
    "table": {"splats": "object/table/table_abs.ply", "offset": [0.0, 0.0, 0.0]},
    "background": "background/background_image/green_background.jpg",
}


@dataclass(frozen=True)
class UrdfInfo:
    path: Path
    links: tuple[str, ...]  # every link, file order
    arm_joints: tuple[str, ...]  # the 7 revolute joints, file order
    gripper_joints: tuple[str, ...]  # the 2 prismatic finger joints
    ee_link: str
    meshes: tuple[Path, ...]  # every mesh file the URDF references


@dataclass(frozen=True)
class ObjectAsset:
    mesh: Path
    splats: Path
    center: bool
    offset: tuple[float, float, float]
    scale: tuple[float, float, float]


@dataclass(frozen=True)
class AssetLayout:
    root: Path
    urdf: UrdfInfo
    link_splats: dict[str, Path]  # rendered link -> its PLY
    robot_offset: tuple[float, float, float]
    default_qpos: tuple[float, ...]  # arm joints, then gripper joints
    objects: dict[str, ObjectAsset]  # cube, plate
    table_splats: Path
    table_offset: tuple[float, float, float]
    background: Path


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in base:
            raise ValueError(f"{where}: unknown key {k!r}; allowed: {sorted(base)}")
        out[k] = _merge(base[k], v, f"{where}.{k}") if isinstance(base[k], dict) and isinstance(v, dict) else v
    return out


def _vec3(value: Any, key: str) -> tuple[float, float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3):
        raise ValueError(f"{key}: expected three numbers [x, y, z], got {value!r}")
    return float(value[0]), float(value[1]), float(value[2])


def _file(root: Path, rel: str, what: str) -> Path:
    p = root / rel
    if not p.is_file():
        raise FileNotFoundError(f"GSEnv assets {root}: {what} {p} does not exist")
    return p


def parse_urdf(path: Path, ee_link: str | None = None) -> UrdfInfo:
    """Links, the Franka's joints and the meshes of a URDF; errors name the file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: not a URDF ({e})") from None
    links = tuple(el.get("name", "") for el in root.findall("link"))
    joints = [(j.get("name", ""), j.get("type", "")) for j in root.findall("joint")]
    arm = tuple(n for n, t in joints if t in ("revolute", "continuous"))
    gripper = tuple(n for n, t in joints if t == "prismatic")
    if len(arm) != 7 or len(gripper) != 2:
        raise ValueError(f"{path}: PutCubeOnPlate drives a Franka arm: 7 revolute and 2 prismatic (finger) "
                         f"joints, found {len(arm)} revolute {list(arm)} and {len(gripper)} prismatic {list(gripper)}")
    if ee_link is None:
        tcp = [n for n in links if n.endswith("hand_tcp")]
        if len(tcp) != 1:
            raise ValueError(f"{path}: cannot tell the end-effector link (links ending in 'hand_tcp': {tcp}); "
                             f"set robot.ee_link in {MANIFEST}")
        ee_link = tcp[0]
    elif ee_link not in links:
        raise ValueError(f"{path}: robot.ee_link {ee_link!r} is not a link of the URDF")
    meshes = []
    for mesh in root.iter("mesh"):
        name = mesh.get("filename", "")
        if name.startswith("package://"):
            name = name[len("package://"):]
        meshes.append((path.parent / name).resolve())
    return UrdfInfo(path, links, arm, gripper, ee_link, tuple(meshes))


def load_manifest(root: Path) -> dict[str, Any]:
    """DEFAULT_MANIFEST with the folder's gsenv_assets.yaml (if any) applied."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        return copy.deepcopy(DEFAULT_MANIFEST)
    data = yaml.safe_load(manifest.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{manifest}: expected a mapping at the top level")
    return _merge(DEFAULT_MANIFEST, data, str(manifest))


def check_assets(assets_path: str | Path | None) -> AssetLayout:
    """Resolve and check every file of the asset folder (relative to the working directory);
    the first missing one raises FileNotFoundError naming it. Callers prefix the config key."""
    if assets_path is None or str(assets_path) == "":
        raise FileNotFoundError("GSEnv needs an asset folder: a copy of RLinf/gsenv-assets-v0, or "
                                "`python -m pirl.envs.gsenv.synthetic DIR` for a synthetic one")
    root = Path(assets_path).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"GSEnv asset folder {root} does not exist")
    m = load_manifest(root)
    r = m["robot"]
    urdf = parse_urdf(_file(root, r["urdf"], "robot URDF"), r["ee_link"])
    for mesh in urdf.meshes:
        if not mesh.is_file():
            raise FileNotFoundError(f"GSEnv assets {root}: mesh {mesh} referenced by {urdf.path} does not exist")
    splat_dir = root / r["splats"]
    if not splat_dir.is_dir():
        raise FileNotFoundError(f"GSEnv assets {root}: robot splat folder {splat_dir} does not exist")
    suffix = str(r["splat_suffix"])
    link_splats = {}
    for f in sorted(splat_dir.glob(f"*{suffix}")):
        link = f.name[: -len(suffix)]
        if link not in urdf.links:
            raise ValueError(f"GSEnv assets {root}: {f} names link {link!r}, which {urdf.path} does not have")
        link_splats[link] = f
    if not link_splats:
        raise FileNotFoundError(f"GSEnv assets {root}: no robot link splats <link>{suffix} in {splat_dir}")
    qpos = tuple(float(q) for q in r["default_qpos"])
    if len(qpos) != 9:
        raise ValueError(f"GSEnv assets {root}: robot.default_qpos needs 9 values (7 arm, 2 finger), got {len(qpos)}")
    objects = {}
    for name in OBJECTS:
        o = m["objects"][name]
        objects[name] = ObjectAsset(
            mesh=_file(root, o["mesh"], f"{name} mesh"), splats=_file(root, o["splats"], f"{name} splats"),
            center=bool(o["center"]), offset=_vec3(o["offset"], f"objects.{name}.offset"),
            scale=_vec3(o["scale"], f"objects.{name}.scale"))
    return AssetLayout(
        root=root, urdf=urdf, link_splats=link_splats, robot_offset=_vec3(r["offset"], "robot.offset"),
        default_qpos=qpos, objects=objects,
        table_splats=_file(root, m["table"]["splats"], "table splats"),
        table_offset=_vec3(m["table"]["offset"], "table.offset"),
        background=_file(root, m["background"], "background image"),
    )
