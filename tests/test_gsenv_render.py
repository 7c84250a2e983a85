"""GSEnv's rendering pieces on the CPU, without a simulator: the 3DGS PLY layout, SH colour,
the splat transforms, the camera convention, pirl's torch rasterizer against a float64
per-pixel reference, compositing, and the asset-folder checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from scipy.special import sph_harm_y

from pirl.envs.gsenv import compositing
from pirl.envs.gsenv.assets import DEFAULT_MANIFEST, MANIFEST, check_assets
from pirl.envs.gsenv.camera import Camera
from pirl.envs.gsenv.rasterize import TorchRasterizer, project, rasterize_torch
from pirl.envs.gsenv.renderer import GSRenderer, SplatCloud
from pirl.envs.gsenv.splats import Splats, load_ply, quat_to_matrix, save_ply, sh_basis, sh_to_rgb
from pirl.envs.gsenv.transforms import invert, place, pose_matrix, view_dirs

GEN = torch.Generator().manual_seed(0)


def _rand(*shape, dtype=torch.float64):
    return torch.rand(*shape, generator=GEN, dtype=dtype)


def _randn(*shape, dtype=torch.float64):
    return torch.randn(*shape, generator=GEN, dtype=dtype)


def _random_pose(scale: float = 0.3) -> torch.Tensor:
    q = _randn(4)
    return pose_matrix(scale * _randn(3), q / q.norm())


# ------------------------------------------------------------------------------ PLY

def _write_raw_ply(path, props: dict[str, np.ndarray]) -> None:
    """A binary PLY written field by field, independently of pirl's writer."""
    n = len(next(iter(props.values())))
    header = f"ply\nformat binary_little_endian 1.0\ncomment test\nelement vertex {n}\n"
    header += "".join(f"property float {k}\n" for k in props) + "end_header\n"
    arr = np.empty(n, dtype=[(k, "<f4") for k in props])
    for k, v in props.items():
        arr[k] = v
    path.write_bytes(header.encode() + arr.tobytes())


def test_ply_activations_and_orders(tmp_path):
    n, k = 5, 16  # SH degree 3
    rng = np.random.default_rng(0)
    raw = {"x": rng.normal(size=n), "y": rng.normal(size=n), "z": rng.normal(size=n),
           "nx": np.zeros(n), "ny": np.zeros(n), "nz": np.zeros(n),
           **{f"f_dc_{c}": rng.normal(size=n) for c in range(3)},
           **{f"f_rest_{i}": rng.normal(size=n) for i in range(3 * (k - 1))},
           "opacity": rng.normal(size=n), **{f"scale_{i}": rng.normal(size=n) - 4 for i in range(3)},
           **{f"rot_{i}": rng.normal(size=n) for i in range(4)}}
    raw = {key: v.astype(np.float32) for key, v in raw.items()}
    _write_raw_ply(tmp_path / "s.ply", raw)
    s = load_ply(tmp_path / "s.ply")
    assert s.sh_degree == 3 and len(s) == n
    np.testing.assert_allclose(s.opacities, 1 / (1 + np.exp(-raw["opacity"].astype(np.float64))), rtol=1e-6)
    np.testing.assert_allclose(s.scales[:, 1], np.exp(raw["scale_1"].astype(np.float64)), rtol=1e-6)
    q = np.stack([raw[f"rot_{i}"] for i in range(4)], 1).astype(np.float64)
    np.testing.assert_allclose(s.quats, q / np.linalg.norm(q, axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    # rot_0 is w: the rotation is scipy's of the scalar-last (x, y, z, w)
    np.testing.assert_allclose(quat_to_matrix(s.quats.double()), Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix(),
                               atol=1e-6)
    # f_rest is channel-major: coefficient j (1..15) of channel c is f_rest_{c*15 + j-1}
    for c in range(3):
        for j in (1, 7, 15):
            np.testing.assert_allclose(s.sh[:, j, c], raw[f"f_rest_{c * 15 + j - 1}"])
    np.testing.assert_allclose(s.sh[:, 0, 2], raw["f_dc_2"])
    save_ply(tmp_path / "again.ply", s)
    t = load_ply(tmp_path / "again.ply")
    for a, b in zip((s.means, s.quats, s.scales, s.opacities, s.sh), (t.means, t.quats, t.scales, t.opacities, t.sh)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ply_ascii_and_errors(tmp_path):
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    rows = [[0.1, 0.2, 0.3, 1, 2, 3, 0.0, -3, -3, -3, 2, 0, 0, 0], [1, 1, 1, 0, 0, 0, 2.0, -2, -2, -2, 0, 0, 1, 0]]
    text = "ply\nformat ascii 1.0\nelement vertex 2\n" + "".join(f"property float {n}\n" for n in names)
    (tmp_path / "a.ply").write_text(text + "end_header\n" + "\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    s = load_ply(tmp_path / "a.ply")
    assert s.sh_degree == 0
    torch.testing.assert_close(s.quats[0], torch.tensor([1.0, 0, 0, 0]))
    torch.testing.assert_close(s.opacities[0], torch.tensor(0.5))
    _write_raw_ply(tmp_path / "bad.ply", {"x": np.zeros(2), "y": np.zeros(2), "z": np.zeros(2)})
    with pytest.raises(ValueError, match=r"bad\.ply.*opacity"):
        load_ply(tmp_path / "bad.ply")
    good = (tmp_path / "a.ply").read_bytes()
    save_ply(tmp_path / "b.ply", s)
    (tmp_path / "cut.ply").write_bytes((tmp_path / "b.ply").read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_ply(tmp_path / "cut.ply")
    with pytest.raises(FileNotFoundError, match="nothere.ply"):
        load_ply(tmp_path / "nothere.ply")
    assert good  # the ascii file was left as written


# ------------------------------------------------------------------------------- SH

def test_sh_basis_is_3dgs_real_spherical_harmonics():
    d = _randn(64, 3)
    theta, phi = torch.arccos(d[:, 2] / d.norm(dim=1)), torch.atan2(d[:, 1], d[:, 0])
    ref = []
    for lv in range(4):
        for m in range(-lv, lv + 1):
            y = sph_harm_y(lv, abs(m), theta.numpy(), phi.numpy())  # with the Condon-Shortley phase
            ref.append(math.sqrt(2) * y.imag if m < 0 else (y.real if m == 0 else math.sqrt(2) * y.real))
    np.testing.assert_allclose(sh_basis(3, d).numpy(), np.stack(ref, -1), atol=1e-12)
    sh = _randn(64, 16, 3)
    expect = (np.einsum("nk,nkc->nc", np.stack(ref, -1), sh.numpy()) + 0.5).clip(min=0)
    np.testing.assert_allclose(sh_to_rgb(sh, d).numpy(), expect, atol=1e-12)
    np.testing.assert_allclose(sh_to_rgb(sh[:, :1], None).numpy(), (0.28209479177387814 * sh[:, 0] + 0.5).clip(min=0))


# ------------------------------------------------------------------------ transforms

def test_transforms_round_trip_at_default_pose_and_a_known_motion():
    n, g = 50, 3
    means = _randn(n, 3)
    a = _randn(n, 3, 3) * 0.1
    covs = a @ a.transpose(-1, -2)
    group = torch.randint(0, g, (n,), generator=GEN)
    default = torch.stack([_random_pose() for _ in range(g)])  # captured links' world poses
    capture = invert(default)
    # at the default pose every splat stays where its PLY put it
    m, c = place(means, covs, group, (default @ capture)[None])
    torch.testing.assert_close(m[0], means, rtol=0, atol=1e-12)
    torch.testing.assert_close(c[0], covs, rtol=0, atol=1e-12)
    # each link moved rigidly by motion_g: its splats move by exactly that motion
    motion = torch.stack([_random_pose(1.0) for _ in range(g)])
    m, c = place(means, covs, group, (motion @ default @ capture)[None])
    rot = Rotation.from_matrix(motion[:, :3, :3].numpy())
    for i in range(n):
        gi = int(group[i])
        np.testing.assert_allclose(m[0, i].numpy(), rot[gi].apply(means[i].numpy()) + motion[gi, :3, 3].numpy(), atol=1e-12)
        r = rot[gi].as_matrix()
        np.testing.assert_allclose(c[0, i].numpy(), r @ covs[i].numpy() @ r.T, atol=1e-12)
    # view directions taken back into the capture frame: R⁻¹ (μ_world − camera)
    cam = _randn(3)
    mats = (motion @ default @ capture)[None]
    dirs = view_dirs(means, group, mats, cam)
    expect = torch.einsum("nji,nj->ni", mats[0, group, :3, :3], m[0] - cam)
    torch.testing.assert_close(dirs[0], expect, rtol=0, atol=1e-12)


def test_pose_matrix_quaternion_order_and_inverse():
    q = _randn(8, 4)
    q = q / q.norm(dim=1, keepdim=True)
    p = _randn(8, 3)
    t = pose_matrix(p, q)
    np.testing.assert_allclose(t[:, :3, :3].numpy(), Rotation.from_quat(q[:, [1, 2, 3, 0]].numpy()).as_matrix(), atol=1e-12)
    torch.testing.assert_close(invert(t) @ t, torch.eye(4, dtype=torch.float64).expand(8, 4, 4), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- camera

def test_camera_optical_axis_lands_at_principal_point():
    cam = Camera.from_config()
    assert (cam.width, cam.height) == (640, 480)
    forward, left, up = cam.cam_to_world[:3, :3].T  # SAPIEN mount: x forward, y left, z up
    for depth in (0.2, 0.7, 3.0):
        uv, z = cam.project((cam.center + depth * forward)[None])
        torch.testing.assert_close(uv[0], torch.tensor([cam.cx, cam.cy], dtype=torch.float64), rtol=0, atol=1e-9)
        torch.testing.assert_close(z[0], torch.tensor(depth, dtype=torch.float64))
    uv, _ = cam.project(torch.stack([cam.center + forward + 0.1 * left, cam.center + forward + 0.1 * up]))
    assert uv[0, 0] < cam.cx - 50 and abs(uv[0, 1] - cam.cy) < 1e-9  # left of the axis -> smaller u
    assert uv[1, 1] < cam.cy - 50 and abs(uv[1, 0] - cam.cx) < 1e-9  # above -> smaller v (rows go down)
    np.testing.assert_allclose(uv[0, 0], cam.cx - cam.fx * 0.1, atol=1e-9)
    small = cam.resized(160)
    assert (small.width, small.height) == (160, 120)
    pts = cam.center + torch.stack([forward + 0.2 * _randn(3) for _ in range(5)])
    torch.testing.assert_close(small.project(pts)[0], cam.project(pts)[0] / 4)
    with pytest.raises(ValueError, match="aspect"):
        cam.resized(150)
    with pytest.raises(ValueError, match="not a rotation"):
        Camera.from_config({"cam_to_world": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]})
    with pytest.raises(ValueError, match="fov"):
        Camera.from_config({"fov": 1.0})


# ------------------------------------------------------------------------ rasterizer

def _scene(n: int, cam: Camera, spread: float = 0.08, size: float = 0.01):
    target = cam.center + 0.5 * cam.cam_to_world[:3, 0]
    means = target + spread * _randn(n, 3)
    a = _randn(n, 3, 3) * size
    covs = a @ a.transpose(-1, -2) + 1e-6 * torch.eye(3, dtype=torch.float64)
    return means, covs, _rand(n, 3), _rand(n)


def _reference_render(means, covs, colors, opac, cam):
    """gsplat's per-pixel loop in float64: every splat tested at every pixel, front to back."""
    pr = project(means, covs, opac, cam.viewmat(), cam.K, cam.width, cam.height)
    jj, ii = torch.meshgrid(torch.arange(cam.width, dtype=torch.float64), torch.arange(cam.height, dtype=torch.float64),
                            indexing="xy")
    px, py = jj + 0.5, ii + 0.5
    T = torch.ones(cam.height, cam.width, dtype=torch.float64)
    C = torch.zeros(cam.height, cam.width, 3, dtype=torch.float64)
    done = torch.zeros_like(T, dtype=torch.bool)
    for n in torch.argsort(pr.depths).tolist():
        if not bool((pr.radii[n] > 0).all()):
            continue
        a, b, c = pr.conics[n]
        dx, dy = pr.means2d[n, 0] - px, pr.means2d[n, 1] - py
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp(opac[n] * torch.exp(-sigma), max=0.999)
        use = (sigma >= 0) & (alpha >= 1 / 255) & ~done
        stop = use & (T * (1 - alpha) <= 1e-4)
        done |= stop
        use &= ~stop
        C += torch.where(use[..., None], (alpha * T)[..., None] * colors[n], 0.0)
        T = torch.where(use, T * (1 - alpha), T)
    return C, 1 - T


def test_rasterizer_matches_per_pixel_reference():
    cam = Camera.from_config().resized(64)
    means, covs, colors, opac = _scene(300, cam)
    means[:10] = cam.center - 0.3 * cam.cam_to_world[:3, 0]  # behind the camera: culled
    rgb, alpha = rasterize_torch(means, covs, colors, opac, cam.viewmat(), cam.K, cam.width, cam.height)
    ref_rgb, ref_alpha = _reference_render(means, covs, colors, opac, cam)
    assert 0.2 < float(ref_alpha.mean()) < 0.95  # a partly covered image, some pixels stopped early
    torch.testing.assert_close(rgb, ref_rgb, rtol=0, atol=1e-10)
    torch.testing.assert_close(alpha[..., 0], ref_alpha, rtol=0, atol=1e-10)
    rgb32, alpha32 = rasterize_torch(means.float(), covs.float(), colors.float(), opac.float(), cam.viewmat(), cam.K,
                                     cam.width, cam.height)
    torch.testing.assert_close(rgb32.double(), ref_rgb, rtol=0, atol=1e-5)


def test_single_splat_centroid_and_profile():
    cam = Camera.from_config().resized(160)
    forward, left, up = cam.cam_to_world[:3, :3].T
    mean = cam.center + 0.6 * forward + 0.05 * left - 0.03 * up  # off the axis
    sigma = 0.004
    covs = (sigma**2 * torch.eye(3, dtype=torch.float64))[None]
    rgb, alpha = rasterize_torch(mean[None], covs, torch.ones(1, 3, dtype=torch.float64),
                                 torch.tensor([0.8], dtype=torch.float64), cam.viewmat(), cam.K, cam.width, cam.height)
    a = alpha[..., 0]
    jj, ii = torch.meshgrid(torch.arange(cam.width, dtype=torch.float64) + 0.5,
                            torch.arange(cam.height, dtype=torch.float64) + 0.5, indexing="xy")
    centroid = torch.stack([(a * jj).sum(), (a * ii).sum()]) / a.sum()
    uv, z = cam.project(mean[None])
    torch.testing.assert_close(centroid, uv[0], rtol=0, atol=0.02)
    # peak: o·exp(−½ dᵀ(Σ2d)⁻¹d) with Σ2d = J Σ Jᵀ + 0.3 I, J the perspective Jacobian (float64, here)
    cam_pt = cam.viewmat()[:3, :3] @ mean + cam.viewmat()[:3, 3]
    x, y, zc = cam_pt.tolist()
    jac = torch.tensor([[cam.fx / zc, 0, -cam.fx * x / zc**2], [0, cam.fy / zc, -cam.fy * y / zc**2]], dtype=torch.float64)
    r = cam.viewmat()[:3, :3]
    s2 = jac @ r @ covs[0] @ r.T @ jac.T + 0.3 * torch.eye(2, dtype=torch.float64)
    i, j = int(uv[0, 1]), int(uv[0, 0])
    d = uv[0] - torch.tensor([j + 0.5, i + 0.5], dtype=torch.float64)
    expect = 0.8 * torch.exp(-0.5 * d @ torch.linalg.inv(s2) @ d)
    torch.testing.assert_close(a[i, j], expect, rtol=1e-9, atol=0)


def test_nearer_splat_occludes_and_input_order_does_not_matter():
    cam = Camera.from_config().resized(64)
    forward = cam.cam_to_world[:3, 0]
    means = torch.stack([cam.center + 0.4 * forward, cam.center + 0.8 * forward])  # near, far; both on the axis
    covs = torch.stack([(0.02**2) * torch.eye(3, dtype=torch.float64)] * 2)
    colors = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64)
    opac = torch.tensor([0.99, 0.99], dtype=torch.float64)
    i, j = int(cam.cy), int(cam.cx)
    rgb, _ = rasterize_torch(means, covs, colors, opac, cam.viewmat(), cam.K, cam.width, cam.height)
    assert rgb[i, j, 0] > 0.9 and rgb[i, j, 2] < 0.05  # red (near) in front of blue
    swapped, _ = rasterize_torch(means.flip(0), covs, colors.flip(0), opac, cam.viewmat(), cam.K, cam.width, cam.height)
    torch.testing.assert_close(swapped, rgb, rtol=0, atol=1e-12)
    moved = means.clone()
    moved[0] = cam.center + 1.2 * forward  # red now behind blue
    rgb2, _ = rasterize_torch(moved, covs, colors, opac, cam.viewmat(), cam.K, cam.width, cam.height)
    assert rgb2[i, j, 2] > 0.9 and rgb2[i, j, 0] < 0.05


def test_layers_composited_front_over_back_equal_one_pass():
    cam = Camera.from_config().resized(64)
    forward = cam.cam_to_world[:3, 0]
    front = _scene(150, cam, spread=0.05)
    back = _scene(150, cam, spread=0.05)
    back = (back[0] + 0.3 * forward,) + back[1:]  # every back splat farther than every front one
    # Translucent splats, so that no pixel reaches the T = 1e-4 stop (where a joint pass skips
    # back splats that the back layer alone keeps); the stop is tested against the reference.
    front, back = front[:3] + (0.4 * front[3],), back[:3] + (0.4 * back[3],)
    args = (cam.viewmat(), cam.K, cam.width, cam.height)
    f_rgb, f_a = rasterize_torch(*front, *args)
    b_rgb, b_a = rasterize_torch(*back, *args)
    rgb, a = compositing.over(f_rgb, f_a, b_rgb, b_a)
    joint = [torch.cat([x, y]) for x, y in zip(front, back)]
    j_rgb, j_a = rasterize_torch(*joint, *args)
    assert int(((f_a > 0.1) & (b_a > 0.1)).sum()) > 200 and float(j_a.max()) < 1 - 1e-3  # overlap, no stop
    torch.testing.assert_close(rgb, j_rgb, rtol=0, atol=1e-10)
    torch.testing.assert_close(a, j_a, rtol=0, atol=1e-10)
    bg = _rand(cam.height, cam.width, 3)
    out = compositing.onto_background(rgb, a, bg)
    torch.testing.assert_close(out[a[..., 0] < 1e-6], bg[a[..., 0] < 1e-6])


def test_renderer_at_capture_pose_renders_the_plys_as_they_are():
    cam = Camera.from_config().resized(64)
    parts = []
    for depth in (0.0, 0.0, 0.3):  # two foreground groups, then a table behind them
        means, covs, colors, opac = _scene(60, cam, spread=0.05)
        means = means + depth * cam.cam_to_world[:3, 0]
        parts.append(SplatCloud(means.float(), covs.float(), opac.float(),
                                ((colors - 0.5) / 0.28209479177387814).float()[:, None], torch.zeros(60, dtype=torch.long)))
    fg = SplatCloud.merge(parts[:2])
    default = torch.stack([_random_pose(), _random_pose()]).float()
    bg = _rand(cam.height, cam.width, 3).float()
    r = GSRenderer(fg, invert(default), parts[2], bg, cam, TorchRasterizer(), cache_table=True)
    img = r.render(default[None].expand(2, -1, -1, -1))
    assert img.shape == (2, 48, 64, 3) and img.dtype == torch.uint8
    args = (cam.viewmat().float(), cam.K.float(), cam.width, cam.height)
    f = rasterize_torch(fg.means, fg.covs, sh_to_rgb(fg.sh, None), fg.opacities, *args)
    t = rasterize_torch(parts[2].means, parts[2].covs, sh_to_rgb(parts[2].sh, None), parts[2].opacities, *args)
    expect = compositing.to_uint8(compositing.onto_background(*compositing.over(*f, *t), bg))
    assert (img[0].int() - expect.int()).abs().max() <= 1 and torch.equal(img[0], img[1])
    one_by_one = GSRenderer(fg, invert(default), parts[2], bg, cam, TorchRasterizer(), cache_table=True, render_bs=1)
    assert torch.equal(one_by_one.render(default[None].expand(2, -1, -1, -1)), img)
    uncached = GSRenderer(fg, invert(default), parts[2], bg, cam, TorchRasterizer(), cache_table=False)
    assert (uncached.render(default[None]).int() - img[:1].int()).abs().max() <= 1  # the table is behind: same image
    with pytest.raises(ValueError, match=r"poses must be \(B, 2, 4, 4\)"):
        r.render(default)


# -------------------------------------------------------------------------- assets

_URDF = """<robot name="r">
  <link name="base"><visual><geometry><mesh filename="meshes/base.obj"/></geometry></visual></link>
  {links}
  {joints}
  <link name="hand_tcp"/>
</robot>"""


def _fake_folder(root):
    """The default (RLinf/gsenv-assets-v0) layout with placeholder files."""
    links = "".join(f'<link name="l{i}"/>' for i in range(1, 10))
    joints = "".join(f'<joint name="j{i}" type="{"revolute" if i <= 7 else "prismatic"}">'
                     f'<parent link="{f"l{i - 1}" if i > 1 else "base"}"/><child link="l{i}"/></joint>' for i in range(1, 10))
    m = DEFAULT_MANIFEST
    files = [m["robot"]["urdf"], f"{m['robot']['splats']}/base{m['robot']['splat_suffix']}",
             m["objects"]["cube"]["mesh"], m["objects"]["cube"]["splats"], m["objects"]["plate"]["mesh"],
             m["objects"]["plate"]["splats"], m["table"]["splats"], m["background"]]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / m["robot"]["urdf"]).write_text(_URDF.format(links=links, joints=joints))
    (root / "robot/my_franka/meshes").mkdir()
    (root / "robot/my_franka/meshes/base.obj").write_text("x")
    return files


def test_asset_folder_checks_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"needs an asset folder"):
        check_assets(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_assets(tmp_path / "nowhere")
    files = _fake_folder(tmp_path)
    layout = check_assets(tmp_path)
    assert layout.urdf.ee_link == "hand_tcp" and list(layout.link_splats) == ["base"]
    assert layout.urdf.arm_joints == tuple(f"j{i}" for i in range(1, 8))
    assert layout.robot_offset == (0.0, 0.0, 0.02) and layout.objects["plate"].scale == (0.96, 1.0, 0.96)
    for rel in files[1:]:
        (tmp_path / rel).rename(tmp_path / "moved")
        with pytest.raises(FileNotFoundError, match=(tmp_path / rel).parent.name):
            check_assets(tmp_path)
        (tmp_path / "moved").rename(tmp_path / rel)
    (tmp_path / "robot/my_franka/meshes/base.obj").unlink()
    with pytest.raises(FileNotFoundError, match=r"mesh .*base\.obj referenced by"):
        check_assets(tmp_path)
    (tmp_path / "robot/my_franka/meshes/base.obj").write_text("x")
    (tmp_path / "robot/my_franka/parts/elbow_3dgs_abs.ply").write_text("x")
    with pytest.raises(ValueError, match="names link 'elbow'"):
        check_assets(tmp_path)
    (tmp_path / "robot/my_franka/parts/elbow_3dgs_abs.ply").unlink()
    (tmp_path / MANIFEST).write_text("robot:\n  ofset: [0, 0, 0]\n")
    with pytest.raises(ValueError, match=r"gsenv_assets.yaml.robot: unknown key 'ofset'"):
        check_assets(tmp_path)
    (tmp_path / MANIFEST).write_text("robot:\n  offset: [0, 0, 0.1]\nobjects:\n  cube:\n    center: false\n")
    layout = check_assets(tmp_path)
    assert layout.robot_offset == (0.0, 0.0, 0.1) and not layout.objects["cube"].center
    assert layout.objects["plate"].center  # untouched entries keep their defaults


def test_rasterizer_choice():
    from pirl.envs.gsenv.rasterize import make_rasterizer

    assert make_rasterizer("auto", torch.device("cpu")).name == "torch"
    assert make_rasterizer("torch", torch.device("cpu")).name == "torch"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="render_backend: torch"):
            make_rasterizer("gsplat", torch.device("cpu"))
    with pytest.raises(ValueError, match="render_backend must be one of"):
        make_rasterizer("opengl", torch.device("cpu"))


def test_splats_covariance():
    s = Splats(_randn(4, 3).float(), _randn(4, 4).float(), _rand(4, 3).float() + 0.1, _rand(4).float(),
               _randn(4, 1, 3).float())
    r = Rotation.from_quat((s.quats / s.quats.norm(dim=1, keepdim=True))[:, [1, 2, 3, 0]].double().numpy()).as_matrix()
    expect = r @ np.apply_along_axis(np.diag, 1, s.scales.double().numpy() ** 2) @ r.transpose(0, 2, 1)
    np.testing.assert_allclose(s.covariances().double().numpy(), expect, rtol=1e-5, atol=1e-7)
