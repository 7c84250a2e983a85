"""3D Gaussian splats: the standard 3DGS PLY layout, its activations, and colour from
spherical harmonics.

The PLY layout is the one graphdeco-inria's gaussian-splatting `save_ply` writes (and
nerfstudio's `ns-export gaussian-splat`, gsplat's exporter): one `vertex` element with
float properties

    x y z                  centre
    nx ny nz               unused (zeros)
    f_dc_0..2              SH degree-0 coefficient per colour channel
    f_rest_0..3(K-1)-1     higher SH coefficients, CHANNEL-MAJOR: f_rest_{c*(K-1)+k-1} is
                           coefficient k of channel c (K = (degree+1)^2, degree 0..3)
    opacity                logit: opacity = sigmoid(value)
    scale_0..2             log of the per-axis standard deviation: scale = exp(value)
    rot_0..3               quaternion in (w, x, y, z) order, not necessarily unit

`Splats` holds the activated values; `save_ply` writes them back in that layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Real spherical-harmonics basis of 3DGS / gsplat (with the Condon-Shortley phase), bands 0-3.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
MAX_SH_DEGREE = 3

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class Splats:
    """N Gaussians, activated, in the frame their PLY was captured in."""

    means: torch.Tensor  # (N, 3) centres, metres
    quats: torch.Tensor  # (N, 4) unit quaternions (w, x, y, z)
    scales: torch.Tensor  # (N, 3) per-axis standard deviations, metres
    opacities: torch.Tensor  # (N,) in (0, 1)
    sh: torch.Tensor  # (N, K, 3) SH coefficients, K = (sh_degree + 1)^2; sh[:, 0] = f_dc

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return math.isqrt(int(self.sh.shape[1])) - 1

    def covariances(self) -> torch.Tensor:
        """(N, 3, 3) Σ = R diag(s²) Rᵀ."""
        r = quat_to_matrix(self.quats)
        return (r * self.scales[:, None, :] ** 2) @ r.transpose(-1, -2)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Splats:
        return Splats(*(t.to(device, dtype) for t in (self.means, self.quats, self.scales, self.opacities, self.sh)))

    def subset(self, index: torch.Tensor) -> Splats:
        return Splats(self.means[index], self.quats[index], self.scales[index], self.opacities[index], self.sh[index])


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z), any norm -> (..., 3, 3) rotation matrices."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """(..., 3) view directions (any length) -> (..., (degree+1)^2) basis values Y_k(d)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * x * z,
                SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def sh_to_rgb(sh: torch.Tensor, dirs: torch.Tensor | None) -> torch.Tensor:
    """(..., K, 3) coefficients, (..., 3) directions from the camera to the splat (in the
    frame the coefficients were fitted in) -> (..., 3) colour, max(Σ_k Y_k c_k + 0.5, 0)
    as 3DGS and gsplat evaluate it. `dirs` may be None for degree 0."""
    degree = math.isqrt(int(sh.shape[-2])) - 1
    if degree == 0 or dirs is None:
        if degree and dirs is None:
            raise ValueError("splats with SH degree > 0 need view directions")
        return (SH_C0 * sh[..., 0, :] + 0.5).clamp_min(0.0)
    basis = sh_basis(degree, dirs)  # (..., K)
    return ((basis[..., None] * sh).sum(-2) + 0.5).clamp_min(0.0)


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) colour in [0, 1] -> the degree-0 coefficient that renders it."""
    return (rgb - 0.5) / SH_C0


# --------------------------------------------------------------------------- PLY I/O

def _read_header(f, path: Path) -> tuple[str, list[tuple[str, int, list[tuple[str, str]]]]]:
    if f.readline().strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic line)")
    fmt = ""
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    while True:
        line = f.readline()
        if not line:
            raise ValueError(f"{path}: PLY header has no end_header")
        words = line.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            return fmt, elements
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise ValueError(f"{path}: PLY property before any element")
            if words[1] == "list":
                raise ValueError(f"{path}: list property {words[-1]!r} in element {elements[-1][0]!r}; "
                                 f"a 3DGS PLY holds only scalar vertex properties")
            if words[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unknown PLY property type {words[1]!r}")
            elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))


def read_ply_vertices(path: str | Path) -> dict[str, np.ndarray]:
    """Property name -> (N,) array of a PLY's first element, which must be `vertex`
    (binary little/big endian or ascii)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"splat file {path} does not exist")
    with open(path, "rb") as f:
        fmt, elements = _read_header(f, path)
        if not elements or elements[0][0] != "vertex":
            raise ValueError(f"{path}: the first PLY element must be 'vertex', got "
                             f"{[e[0] for e in elements]}")
        _, count, props = elements[0]
        if fmt == "ascii":
            data = np.loadtxt(f, max_rows=count, ndmin=2, dtype=np.float64)
            if data.shape != (count, len(props)):
                raise ValueError(f"{path}: expected {count} x {len(props)} ascii values, got {data.shape}")
            return {name: data[:, i] for i, (name, _) in enumerate(props)}
        order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
        if order is None:
            raise ValueError(f"{path}: unknown PLY format {fmt!r}")
        dtype = np.dtype([(name, order + t) for name, t in props])
        raw = f.read(dtype.itemsize * count)
        if len(raw) < dtype.itemsize * count:
            raise ValueError(f"{path}: truncated: {count} vertices need {dtype.itemsize * count} bytes, "
                             f"the file holds {len(raw)}")
        arr = np.frombuffer(raw, dtype=dtype, count=count)
        return {name: arr[name] for name, _ in props}


def _numbered(props: dict[str, np.ndarray], prefix: str) -> list[str]:
    names = [n for n in props if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return sorted(names, key=lambda n: int(n[len(prefix):]))


def load_ply(path: str | Path) -> Splats:
    """A 3DGS PLY -> activated `Splats` (float32, CPU)."""
    path = Path(path)
    props = read_ply_vertices(path)
    required = ["x", "y", "z", "opacity", "f_dc_0", "f_dc_1", "f_dc_2",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [n for n in required if n not in props]
    if missing:
        raise ValueError(f"{path}: not a 3DGS splat file: vertex properties {missing} are missing "
                         f"(has {sorted(props)})")

    def col(names: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(props[n], dtype=np.float64) for n in names], axis=-1))

    n = len(props["x"])
    rest = _numbered(props, "f_rest_")
    k = 1 + len(rest) // 3
    if len(rest) % 3 or math.isqrt(k) ** 2 != k or math.isqrt(k) - 1 > MAX_SH_DEGREE:
        raise ValueError(f"{path}: {len(rest)} f_rest_* properties; expected 0, 9, 24 or 45 (SH degree 0-3)")
    sh = torch.zeros(n, k, 3, dtype=torch.float64)
    sh[:, 0] = col(["f_dc_0", "f_dc_1", "f_dc_2"])
    if rest:
        sh[:, 1:] = col(rest).reshape(n, 3, k - 1).transpose(1, 2)  # channel-major in the file
    quats = col(["rot_0", "rot_1", "rot_2", "rot_3"])
    norm = quats.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError(f"{path}: {int((norm == 0).sum())} splats have an all-zero rotation quaternion")
    splats = Splats(
        means=col(["x", "y", "z"]),
        quats=quats / norm,
        scales=torch.exp(col(["scale_0", "scale_1", "scale_2"])),
        opacities=torch.sigmoid(torch.from_numpy(np.asarray(props["opacity"], dtype=np.float64))),
        sh=sh,
    )
    return splats.to("cpu", torch.float32)


def save_ply(path: str | Path, splats: Splats) -> None:
    """Write `splats` in the standard 3DGS layout (binary little endian, float32),
    inverting the activations: log-scales, opacity logits."""
    n, k = len(splats), int(splats.sh.shape[1])
    sh = splats.sh.detach().double().cpu()
    opac = splats.opacities.detach().double().cpu().clamp(1e-7, 1 - 1e-7)
    columns = {
        "x": splats.means[:, 0], "y": splats.means[:, 1], "z": splats.means[:, 2],
        "nx": torch.zeros(n), "ny": torch.zeros(n), "nz": torch.zeros(n),
        **{f"f_dc_{c}": sh[:, 0, c] for c in range(3)},
        **{f"f_rest_{i}": v for i, v in enumerate(sh[:, 1:].transpose(1, 2).reshape(n, 3 * (k - 1)).unbind(-1))},
        "opacity": torch.log(opac / (1 - opac)),
        **{f"scale_{i}": torch.log(splats.scales[:, i].detach().double().cpu()) for i in range(3)},
        **{f"rot_{i}": splats.quats[:, i] for i in range(4)},
    }
    dtype = np.dtype([(name, "<f4") for name in columns])
    arr = np.empty(n, dtype=dtype)
    for name, v in columns.items():
        arr[name] = torch.as_tensor(v).detach().cpu().numpy()
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n"
    header += "".join(f"property float {name}\n" for name in columns) + "end_header\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(arr.tobytes())
