"""Triton kernels for one flow transition x_t -> x_{t−δ}: the rollout's fused denoising
step and the actor's fused log-prob (forward and backward).

The math is `pirl.flow.transitions` (t=1 is noise; ODE μ = x_t − δ·v; SDE adds the
−(σ_t²·δ/(2t))·x̂1 drift and std σ_t·sqrt(δ); learned noise takes the std per element),
computed in fp32 whatever the input dtype (bf16 / fp16 / fp32 loads are upcast).

Layout: one program per sample b, looping over the horizon in (BLOCK_H, BLOCK_D) tiles;
the whole action dim fits one tile row (BLOCK_D = next_pow2(D)). Every input is addressed
through its own (b, h, d) strides, so sliced, transposed or expanded (stride-0) views are
read in place; outputs are fresh contiguous fp32 tensors (gradients take the input dtype).

The kernels are written as plain functions and jitted on first launch: Triton decides
between the compiler and its CPU interpreter when `triton.jit` runs, and reading
TRITON_INTERPRET at launch time (not at import) lets tests set it whenever they like.
For the same reason the kernels use only Triton builtins, never `tl.standard` helpers
(`tl.sum`, `tl.zeros`): those are jit functions fixed to the mode Triton was imported
in, and calling one from an interpreted kernel fails when that mode was compiled. Sums
are `tl.reduce(x, axis, tl.standard._sum_combine)`, which is what `tl.sum` expands to
(the interpreter recognises that combine function and sums with numpy); zeros are
`tl.full(shape, 0.0, tl.float32)`.
"""
from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl
from triton import knobs

from pirl.flow import transitions as T
from pirl.kernels import reference as R

# Method codes the kernels branch on at compile time (the METHOD constexpr; the kernels
# spell them as literals: module globals are not visible to a jitted function).
METHOD_CODES = {T.ODE: 0, T.FLOW_SDE: 1, T.FLOW_NOISE: 2}

# Reductions of the executed log-prob box (B, C, D_env), `algorithm.logprob_type`.
REDUCE_NONE, REDUCE_ACTION, REDUCE_CHUNK = 0, 1, 2
REDUCE_CODES = {R.TOKEN_LEVEL: REDUCE_NONE, R.ACTION_LEVEL: REDUCE_ACTION, R.CHUNK_LEVEL: REDUCE_CHUNK}

# One tile holds about this many elements: large enough to keep loads wide on a GPU,
# small enough that a (BLOCK_H, BLOCK_D) fp32 tile of each operand stays in registers.
TILE_ELEMENTS = 2048
# The action dim is one tile row; π0 pads actions to 32, so this is far above any use.
MAX_ACTION_DIM = 4096

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Let the compiler fuse a*b + c into one FMA (one rounding instead of two). Said
# explicitly: Triton 3.9 warns that its default flips to off in 3.10.
FP_FUSION = True


def _step_logprob_fwd(
    x_ptr, v_ptr, y_ptr, std_ptr, t_ptr, lp_ptr, ent_ptr,
    sxb, sxh, sxd, svb, svh, svd, syb, syh, syd, ssb, ssh, ssd, stb,
    C, DE, delta, sqrt_delta, noise_level, log_sqrt_2pi,
    METHOD: tl.constexpr, REDUCE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """log N(y; μ, std²) and the Gaussian entropy over the executed box h < C, d < DE of
    sample b, reduced per REDUCE into lp / ent: (B, C, DE), (B, C) or (B,)."""
    b = tl.program_id(0).to(tl.int64)
    t = tl.load(t_ptr + b * stb).to(tl.float32)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < DE
    acc_lp = tl.full((BLOCK_H, BLOCK_D), 0.0, tl.float32)
    acc_ent = tl.full((BLOCK_H, BLOCK_D), 0.0, tl.float32)
    for h0 in range(0, C, BLOCK_H):
        hh = h0 + offs_h
        m = (hh[:, None] < C) & d_ok[None, :]
        x = tl.load(x_ptr + b * sxb + hh[:, None] * sxh + offs_d[None, :] * sxd, mask=m, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + b * svb + hh[:, None] * svh + offs_d[None, :] * svd, mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + b * syb + hh[:, None] * syh + offs_d[None, :] * syd, mask=m, other=0.0).to(tl.float32)
        mean = x - delta * v
        if METHOD == 1:
            # t=1 guard: 1−t := δ there (transitions.sde_sigma).
            one_minus_t = tl.where(t >= 1.0, delta, 1.0 - t)
            sigma = noise_level * tl.sqrt(t / one_minus_t)
            mean = mean - (sigma * sigma * delta / (2.0 * t)) * (x + (1.0 - t) * v)
            std = tl.full((BLOCK_H, BLOCK_D), 0.0, tl.float32) + sigma * sqrt_delta
        else:
            # other=1.0: masked lanes stay finite through log and 1/std
            std = tl.load(std_ptr + b * ssb + hh[:, None] * ssh + offs_d[None, :] * ssd,
                          mask=m, other=1.0).to(tl.float32)
        diff = y - mean
        log_std = tl.log(std)
        lp = tl.where(m, -(diff * diff) / (2.0 * std * std) - log_std - log_sqrt_2pi, 0.0)
        ent = tl.where(m, log_std + log_sqrt_2pi + 0.5, 0.0)
        if REDUCE == 0:
            out = b * C * DE + hh[:, None] * DE + offs_d[None, :]
            tl.store(lp_ptr + out, lp, mask=m)
            tl.store(ent_ptr + out, ent, mask=m)
        elif REDUCE == 1:
            h_ok = hh < C
            tl.store(lp_ptr + b * C + hh, tl.reduce(lp, 1, tl.standard._sum_combine), mask=h_ok)
            tl.store(ent_ptr + b * C + hh, tl.reduce(ent, 1, tl.standard._sum_combine), mask=h_ok)
        else:
            acc_lp += lp
            acc_ent += ent
    if REDUCE == 2:
        tl.store(lp_ptr + b, tl.reduce(tl.reduce(acc_lp, 1, tl.standard._sum_combine), 0, tl.standard._sum_combine))
        tl.store(ent_ptr + b, tl.reduce(tl.reduce(acc_ent, 1, tl.standard._sum_combine), 0, tl.standard._sum_combine))


def _step_logprob_bwd(
    x_ptr, v_ptr, y_ptr, std_ptr, t_ptr, glp_ptr, gent_ptr,
    gx_ptr, gv_ptr, gy_ptr, gstd_ptr,
    sxb, sxh, sxd, svb, svh, svd, syb, syh, syd, ssb, ssh, ssd, stb,
    H, D, C, DE, delta, sqrt_delta, noise_level,
    METHOD: tl.constexpr, REDUCE: tl.constexpr, HAS_GENT: tl.constexpr,
    WANT_X: tl.constexpr, WANT_V: tl.constexpr, WANT_Y: tl.constexpr, WANT_STD: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Gradients of the forward's outputs w.r.t. x_t, v, y = x_next and the learned std,
    written over the full (H, D) of sample b: zero outside the executed box, so the
    contiguous (B, H, D) gradient buffers come out fully written.

    With z = (y − μ)/std: ∂lp/∂μ = z/std, ∂lp/∂std = (z² − 1)/std, ∂ent/∂std = 1/std;
    μ = a_x·x − a_v·v with a_x = 1 − c, a_v = δ + c·(1 − t), c = σ_t²·δ/(2t) (SDE; c = 0 else).
    """
    b = tl.program_id(0).to(tl.int64)
    t = tl.load(t_ptr + b * stb).to(tl.float32)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    coef = 0.0
    sigma = 0.0
    if METHOD == 1:
        one_minus_t = tl.where(t >= 1.0, delta, 1.0 - t)
        sigma = noise_level * tl.sqrt(t / one_minus_t)
        coef = sigma * sigma * delta / (2.0 * t)
    a_x = 1.0 - coef
    a_v = delta + coef * (1.0 - t)
    for h0 in range(0, H, BLOCK_H):
        hh = h0 + offs_h
        full = (hh[:, None] < H) & (offs_d[None, :] < D)
        box = (hh[:, None] < C) & (offs_d[None, :] < DE)
        x = tl.load(x_ptr + b * sxb + hh[:, None] * sxh + offs_d[None, :] * sxd, mask=box, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + b * svb + hh[:, None] * svh + offs_d[None, :] * svd, mask=box, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + b * syb + hh[:, None] * syh + offs_d[None, :] * syd, mask=box, other=0.0).to(tl.float32)
        if METHOD == 1:
            std = tl.full((BLOCK_H, BLOCK_D), 0.0, tl.float32) + sigma * sqrt_delta
        else:
            # other=1.0: masked lanes stay finite through log and 1/std
            std = tl.load(std_ptr + b * ssb + hh[:, None] * ssh + offs_d[None, :] * ssd,
                          mask=box, other=1.0).to(tl.float32)
        # μ exactly as the forward rounds it; a_x, a_v are only its derivatives.
        mean = x - delta * v
        if METHOD == 1:
            mean = mean - coef * (x + (1.0 - t) * v)
        if REDUCE == 0:
            g_off = b * C * DE + hh[:, None] * DE + offs_d[None, :]
            g_lp = tl.load(glp_ptr + g_off, mask=box, other=0.0)
            if HAS_GENT:
                g_ent = tl.load(gent_ptr + g_off, mask=box, other=0.0)
        elif REDUCE == 1:
            g_row = tl.load(glp_ptr + b * C + hh, mask=hh < C, other=0.0)
            g_lp = tl.where(box, g_row[:, None], 0.0)
            if HAS_GENT:
                g_ent = tl.where(box, tl.load(gent_ptr + b * C + hh, mask=hh < C, other=0.0)[:, None], 0.0)
        else:
            g_lp = tl.where(box, tl.load(glp_ptr + b), 0.0)
            if HAS_GENT:
                g_ent = tl.where(box, tl.load(gent_ptr + b), 0.0)
        inv_std = 1.0 / std
        diff = y - mean
        g_mean = g_lp * diff * inv_std * inv_std
        off = hh[:, None] * D + offs_d[None, :]
        if WANT_X:
            tl.store(gx_ptr + b * H * D + off, (a_x * g_mean).to(gx_ptr.dtype.element_ty), mask=full)
        if WANT_V:
            tl.store(gv_ptr + b * H * D + off, (-a_v * g_mean).to(gv_ptr.dtype.element_ty), mask=full)
        if WANT_Y:
            tl.store(gy_ptr + b * H * D + off, (-g_mean).to(gy_ptr.dtype.element_ty), mask=full)
        if WANT_STD:
            z = diff * inv_std
            g_std = g_lp * (z * z - 1.0) * inv_std
            if HAS_GENT:
                g_std += g_ent * inv_std
            tl.store(gstd_ptr + b * H * D + off, g_std.to(gstd_ptr.dtype.element_ty), mask=full)


def _denoise_step(
    x_ptr, v_ptr, n_ptr, std_ptr, t_ptr, flag_ptr, out_ptr, lp_ptr,
    sxb, sxh, sxd, svb, svh, svd, snb, snh, snd, ssb, ssh, ssd, stb, sfb,
    H, D, delta, sqrt_delta, noise_level, log_sqrt_2pi,
    METHOD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """x_{t−δ} = μ + std·ε where flag[b] (the stochastic step), the ODE mean elsewhere,
    and log N(x_{t−δ}; μ, std²) (zero on deterministic rows and for the ODE method)."""
    b = tl.program_id(0).to(tl.int64)
    t = tl.load(t_ptr + b * stb).to(tl.float32)
    stochastic = tl.load(flag_ptr + b * sfb) != 0
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    for h0 in range(0, H, BLOCK_H):
        hh = h0 + offs_h
        m = (hh[:, None] < H) & (offs_d[None, :] < D)
        x = tl.load(x_ptr + b * sxb + hh[:, None] * sxh + offs_d[None, :] * sxd, mask=m, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + b * svb + hh[:, None] * svh + offs_d[None, :] * svd, mask=m, other=0.0).to(tl.float32)
        ode_mean = x - delta * v
        off = b * H * D + hh[:, None] * D + offs_d[None, :]
        if METHOD == 0:
            tl.store(out_ptr + off, ode_mean, mask=m)
            tl.store(lp_ptr + off, tl.full((BLOCK_H, BLOCK_D), 0.0, tl.float32), mask=m)
        else:
            eps = tl.load(n_ptr + b * snb + hh[:, None] * snh + offs_d[None, :] * snd, mask=m, other=0.0).to(tl.float32)
            if METHOD == 1:
                one_minus_t = tl.where(t >= 1.0, delta, 1.0 - t)
                sigma = noise_level * tl.sqrt(t / one_minus_t)
                mean = ode_mean - (sigma * sigma * delta / (2.0 * t)) * (x + (1.0 - t) * v)
                std = tl.full((BLOCK_H, BLOCK_D), 0.0, tl.float32) + sigma * sqrt_delta
            else:
                mean = ode_mean
                # other=1.0: masked lanes stay finite through log and 1/std
                std = tl.load(std_ptr + b * ssb + hh[:, None] * ssh + offs_d[None, :] * ssd,
                              mask=m, other=1.0).to(tl.float32)
            sample = mean + std * eps
            # The density of the stored fp32 sample, as the actor will re-score it.
            diff = sample - mean
            lp = -(diff * diff) / (2.0 * std * std) - tl.log(std) - log_sqrt_2pi
            tl.store(out_ptr + off, tl.where(stochastic, sample, ode_mean), mask=m)
            tl.store(lp_ptr + off, tl.where(stochastic, lp, 0.0), mask=m)


# Jitted on first launch, one copy per mode (compiled / interpreted): see the module doc.
_JIT_CACHE: dict[tuple[str, bool], object] = {}


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1), read now."""
    return bool(knobs.runtime.interpret)


def _kernel(fn):
    key = (fn.__name__, interpreting())
    if key not in _JIT_CACHE:
        _JIT_CACHE[key] = triton.jit(fn)
    return _JIT_CACHE[key]


def _blocks(H: int, D: int) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_D, num_warps): a tile of up to TILE_ELEMENTS, about 8 elements per
    thread (so short horizons get small programs rather than idle lanes)."""
    block_d = triton.next_power_of_2(max(D, 1))
    block_h = max(1, min(triton.next_power_of_2(max(H, 1)), TILE_ELEMENTS // block_d))
    num_warps = max(1, min(8, block_h * block_d // (8 * 32)))
    return block_h, block_d, num_warps


def _strides3(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _check_bhd(name: str, x: torch.Tensor, shape: torch.Size, device: torch.device) -> None:
    if x.dim() != 3 or x.shape != shape:
        raise ValueError(f"{name} must have shape (B, H, D) = {tuple(shape)}, got {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be one of {FLOAT_DTYPES}, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, expected {device} like x_t")


def _check_common(x_t: torch.Tensor, t: torch.Tensor, method: str,
                  learned_std: torch.Tensor | None) -> torch.Tensor | None:
    """Validate what every kernel shares; returns learned_std broadcast to (B, H, D)."""
    if x_t.dim() != 3:
        raise ValueError(f"x_t must be (B, H, D), got shape {tuple(x_t.shape)}")
    _check_bhd("x_t", x_t, x_t.shape, x_t.device)
    B, H, D = x_t.shape
    if D > MAX_ACTION_DIM:
        raise ValueError(f"action dim D={D} exceeds the kernels' limit {MAX_ACTION_DIM}")
    if t.shape != (B,):
        raise ValueError(f"t must be per-sample (B,) = ({B},), got {tuple(t.shape)}")
    if t.device != x_t.device or not t.dtype.is_floating_point:
        raise ValueError(f"t must be a float tensor on {x_t.device}, got {t.dtype} on {t.device}")
    if method not in METHOD_CODES:
        raise ValueError(f"noise_method must be one of {tuple(METHOD_CODES)}, got {method!r}")
    if method != T.FLOW_NOISE:
        return None
    if learned_std is None:
        raise ValueError("flow_noise transition needs learned_std from the noise head")
    try:
        std = learned_std.expand(B, H, D)  # stride-0 views broadcast for free
    except RuntimeError as err:
        raise ValueError(f"learned_std of shape {tuple(learned_std.shape)} does not broadcast to "
                         f"(B, H, D) = {(B, H, D)}") from err
    _check_bhd("learned_std", std, x_t.shape, x_t.device)
    return std


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every kernel output is allocated here, uninitialised: the kernels write all of it
    (the tests replace this with a NaN-filled allocator to check exactly that)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launchable(x: torch.Tensor):
    """Check the tensors can run here; returns the context to launch in (Triton launches
    on the current CUDA device, which need not be x's)."""
    if x.device.type == "cuda":
        return torch.cuda.device(x.device)
    if not interpreting():
        raise RuntimeError("the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors "
                           "(PIRL_KERNELS=torch selects the torch reference)")
    return contextlib.nullcontext()


def denoise_step(
    x_t: torch.Tensor,  # (B, H, D)
    v: torch.Tensor,  # (B, H, D)
    t: torch.Tensor,  # (B,)
    delta: float,
    noise: torch.Tensor,  # (B, H, D) fresh N(0, 1)
    stochastic: torch.Tensor,  # (B,) bool
    method: str,
    noise_level: float = 0.0,
    learned_std: torch.Tensor | None = None,  # (B, H, D) or broadcastable, flow_noise only
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused denoising step: x_next (B, H, D) fp32 and its element log-density (B, H, D)
    fp32 (zero on deterministic rows; for method "ode" every row is deterministic)."""
    std = _check_common(x_t, t, method, learned_std)
    shape = x_t.shape
    _check_bhd("v", v, shape, x_t.device)
    _check_bhd("noise", noise, shape, x_t.device)
    if stochastic.shape != (shape[0],) or stochastic.dtype != torch.bool or stochastic.device != x_t.device:
        raise ValueError(f"stochastic must be a (B,) = ({shape[0]},) bool tensor on {x_t.device}, "
                         f"got {stochastic.dtype} {tuple(stochastic.shape)} on {stochastic.device}")
    device_ctx = _launchable(x_t)
    B, H, D = shape
    x_next = _empty(shape, torch.float32, x_t.device)
    logprob = _empty(shape, torch.float32, x_t.device)
    if x_t.numel() == 0:
        return x_next, logprob
    std_arg = std if std is not None else x_t  # never read unless flow_noise
    flags = stochastic.view(torch.uint8)  # bool is one byte: read it as such, no copy
    block_h, block_d, num_warps = _blocks(H, D)
    with device_ctx:
        _kernel(_denoise_step)[(B,)](
            x_t, v, noise, std_arg, t, flags, x_next, logprob,
            *_strides3(x_t), *_strides3(v), *_strides3(noise), *_strides3(std_arg), t.stride(0), flags.stride(0),
            H, D, float(delta), math.sqrt(delta), float(noise_level), T.LOG_SQRT_2PI,
            METHOD=METHOD_CODES[method], BLOCK_H=block_h, BLOCK_D=block_d,
            num_warps=num_warps, enable_fp_fusion=FP_FUSION,
        )
    return x_next, logprob


def check_logprob_inputs(x_t, v, x_next, t, method, learned_std, action_chunk, action_env_dim):
    """Validate the log-prob kernel's inputs; returns (learned_std as (B, H, D) or None, C, D_env)."""
    if method == T.ODE:
        raise ValueError("an ODE transition has no density: step_logprob needs noise_method "
                         f"in {T.NOISE_METHODS}")
    std = _check_common(x_t, t, method, learned_std)
    _check_bhd("v", v, x_t.shape, x_t.device)
    _check_bhd("x_next", x_next, x_t.shape, x_t.device)
    C, DE = R.executed_box(x_t.shape[1], x_t.shape[2], action_chunk, action_env_dim)
    return std, C, DE


def step_logprob_fwd(x_t, v, x_next, t, delta, method, noise_level, std, C, DE, reduce):
    """Launch the forward kernel; std is the (B, H, D) learned std or None. Returns the
    log-prob and entropy sums over the executed box, shaped per `reduce`, fp32."""
    device_ctx = _launchable(x_t)
    B, H, D = x_t.shape
    out_shape = {REDUCE_NONE: (B, C, DE), REDUCE_ACTION: (B, C), REDUCE_CHUNK: (B,)}[reduce]
    lp = _empty(out_shape, torch.float32, x_t.device)
    ent = _empty(out_shape, torch.float32, x_t.device)
    if B == 0:
        return lp, ent
    std_arg = std if std is not None else x_t
    block_h, block_d, num_warps = _blocks(C, DE)
    with device_ctx:
        _kernel(_step_logprob_fwd)[(B,)](
            x_t, v, x_next, std_arg, t, lp, ent,
            *_strides3(x_t), *_strides3(v), *_strides3(x_next), *_strides3(std_arg), t.stride(0),
            C, DE, float(delta), math.sqrt(delta), float(noise_level), T.LOG_SQRT_2PI,
            METHOD=METHOD_CODES[method], REDUCE=reduce, BLOCK_H=block_h, BLOCK_D=block_d,
            num_warps=num_warps, enable_fp_fusion=FP_FUSION,
        )
    return lp, ent


def step_logprob_bwd(x_t, v, x_next, t, delta, method, noise_level, std, C, DE, reduce,
                     grad_lp, grad_ent, want_x, want_v, want_y, want_std):
    """Launch the backward kernel. grad_lp / grad_ent: gradients of the forward outputs
    (grad_ent may be None). Returns (grad_x_t, grad_v, grad_x_next, grad_std), each a
    (B, H, D) tensor in its input's dtype, or None where not wanted."""
    device_ctx = _launchable(x_t)
    B, H, D = x_t.shape

    def buf(flag, like):
        return _empty((B, H, D), like.dtype, x_t.device) if flag else None

    gx, gv, gy = buf(want_x, x_t), buf(want_v, v), buf(want_y, x_next)
    gstd = buf(want_std and std is not None, std if std is not None else x_t)
    if B == 0:
        return gx, gv, gy, gstd
    std_arg = std if std is not None else x_t
    grad_lp = grad_lp.float().contiguous()
    grad_ent_arg = grad_ent.float().contiguous() if grad_ent is not None else grad_lp
    dummy = x_t  # pointer for outputs a constexpr flag leaves unwritten
    block_h, block_d, num_warps = _blocks(H, D)
    with device_ctx:
        _kernel(_step_logprob_bwd)[(B,)](
            x_t, v, x_next, std_arg, t, grad_lp, grad_ent_arg,
            gx if gx is not None else dummy, gv if gv is not None else dummy,
            gy if gy is not None else dummy, gstd if gstd is not None else dummy,
            *_strides3(x_t), *_strides3(v), *_strides3(x_next), *_strides3(std_arg), t.stride(0),
            H, D, C, DE, float(delta), math.sqrt(delta), float(noise_level),
            METHOD=METHOD_CODES[method], REDUCE=reduce, HAS_GENT=grad_ent is not None,
            WANT_X=gx is not None, WANT_V=gv is not None, WANT_Y=gy is not None, WANT_STD=gstd is not None,
            BLOCK_H=block_h, BLOCK_D=block_d,
            num_warps=num_warps, enable_fp_fusion=FP_FUSION,
        )
    return gx, gv, gy, gstd
