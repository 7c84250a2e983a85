"""Offload: the idle model leaves the accelerator while the other one works.

`actor.enable_offload`: the actor's parameters, gradients and optimizer states go to host
memory while the rollout runs, and come back for training. ZeRO-1/2: DeepSpeed's
`offload_states` moves the trainable parameters (both copies) and gradients; ZeRO-3:
DeepSpeed moves the gradient partitions and the contiguous gradient buffer, and the
low-precision parameter partitions are moved here: DeepSpeed 0.18's own move maps its flat
buffer of trainable partitions onto *every* parameter of the module, so a model with frozen
parameters (π0's `train_expert_only`) fails with "start + length exceeds dimension size"
(its reload maps the trainable ones only, and is used as it is). Its move of the fp32
master partitions accepts only DeepSpeed's FusedAdam, so those are moved here too. Frozen
parameters (a frozen VLM is most of π0's bytes), which no optimizer holds and DeepSpeed
never moves, and the Adam moments (torch AdamW's exp_avg, exp_avg_sq) are moved here for
every stage. "Moved here" is what DeepSpeed does with its pinned buffers: copy into a host
buffer kept between cycles and repoint the tensor's storage at it.
`rollout.enable_offload`: the rollout replica's parameters and buffers go to host memory
while the actor trains.

On a CUDA device the host buffers are pinned and `state_bytes` shows the accelerator bytes
each state frees. On a CPU-only machine there is no second memory, but the move is the same
code: every tensor is copied into a separate host buffer and its old storage released, so
tests/test_engine.py can check that training after an offload / reload cycle is
bit-identical to training without one (a tensor the cycle missed or restored wrongly would
train on stale storage and diverge).
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

ACTOR_STATES = ("lp_params", "lp_grads", "hp_params", "optim_states", "frozen_params")


def _host_like(t: torch.Tensor) -> torch.Tensor:
    """An empty host tensor like t, pinned when t lives on CUDA (fast copies back)."""
    buf = torch.empty(t.shape, dtype=t.dtype, device="cpu")
    return buf.pin_memory() if t.is_cuda else buf


def _bytes_by_device(tensors) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for t in tensors:
        if t is not None and t.numel():
            out[str(t.device)] += t.numel() * t.element_size()
    return dict(out)


class ActorOffload:
    """Host offload of a DeepSpeed engine's states (ZeRO-1, 2 or 3; not with DeepSpeed's own
    parameter offload, which already keeps them on the host)."""

    def __init__(self, engine):
        self.engine = engine
        self.opt = engine.optimizer  # DeepSpeed's ZeRO optimizer
        self.stage = engine.zero_optimization_stage()
        if self.stage not in (1, 2, 3):
            raise ValueError(f"actor.enable_offload needs ZeRO stage 1, 2 or 3, the DeepSpeed config has {self.stage}")
        if engine.zero_offload_param() is not None and str(engine.zero_offload_param().device) != "none":
            raise ValueError("actor.enable_offload: the DeepSpeed config already offloads parameters (offload_param); "
                             "use ds_configs/zero3.json")
        self.device = next(iter(engine.module.parameters())).device
        self.offloaded = False
        self._host: dict[tuple, torch.Tensor] = {}
        # The parameters no optimizer group holds (requires_grad False), fixed once the engine exists.
        groups = self.opt.fp16_groups if self.stage == 3 else self.opt.bit16_groups
        trainable = {id(p) for g in groups for p in g}
        self._frozen_params = [p for p in engine.module.parameters() if id(p) not in trainable]

    # ---- what the states are -----------------------------------------------------------------
    def _adam_states(self) -> list[tuple[dict, str]]:
        return [(state, key) for state in self.opt.optimizer.state.values() for key in ("exp_avg", "exp_avg_sq")
                if key in state]

    def _frozen(self) -> list[torch.Tensor]:
        """This rank's storage of the frozen parameters: under ZeRO-3 their partitions
        (ds_tensor), else the parameters themselves."""
        return [p.ds_tensor for p in self._frozen_params] if self.stage == 3 else self._frozen_params

    def state_tensors(self) -> dict[str, list[torch.Tensor]]:
        """The tensors of each state kind this engine holds (this rank's partitions)."""
        o = self.opt
        if self.stage == 3:
            lp = [o.lp_param_buffer]
            grads = [o.grad_partitions_flat_buffer] if hasattr(o, "grad_partitions_flat_buffer") else []
            hp = list(o.fp32_partitioned_groups_flat)
        else:
            lp = list(o.bit16_groups_flat)
            grads = [g for gl in o.averaged_gradients.values() if gl is not None for g in gl if g is not None]
            hp = list(o.single_partition_of_fp32_groups)
        return {"lp_params": lp, "lp_grads": grads, "hp_params": hp,
                "optim_states": [s[k] for s, k in self._adam_states()], "frozen_params": self._frozen()}

    def state_bytes(self) -> dict[str, dict[str, int]]:
        """state kind -> {device: bytes}: where each state lives now."""
        return {k: _bytes_by_device(v) for k, v in self.state_tensors().items()}

    # ---- moving --------------------------------------------------------------------------------
    def _to_host(self, key: tuple, t: torch.Tensor) -> None:
        buf = self._host.get(key)
        if buf is None:
            buf = self._host[key] = _host_like(t)
        if buf.data_ptr() != t.data_ptr():
            buf.copy_(t)
        t.data = buf

    def offload(self) -> None:
        if self.offloaded:
            return
        from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum, OffloadStateTypeEnum as S

        if self.stage == 3:
            self.engine.offload_states(include=[S.lp_grads, S.contiguous_grad_buffer],
                                       device=OffloadDeviceEnum.cpu, pin_memory=True)
            self._offload_zero3_lp_params()
            for i, t in enumerate(self.opt.fp32_partitioned_groups_flat):
                self._to_host(("hp", i), t)
        else:
            self.engine.offload_states(include=[S.hp_params, S.lp_params, S.lp_grads],
                                       device=OffloadDeviceEnum.cpu, pin_memory=True)
        for j, (state, key) in enumerate(self._adam_states()):
            self._to_host(("adam", j, key), state[key])
        for i, t in enumerate(self._frozen()):
            self._to_host(("frozen", i), t)
        self.offloaded = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _offload_zero3_lp_params(self) -> None:
        """ZeRO-3's flat buffer of trainable low-precision partitions to the host, each
        partition re-pointed into it in the buffer's own order (the trainable parameters,
        group by group: what DeepSpeed's reload_states maps back), so DeepSpeed's reload
        brings it back."""
        from deepspeed.runtime.zero.utils import get_mapping_to_flat_buffer
        from deepspeed.runtime.zero.offload_config import OffloadStateTypeEnum as S

        o = self.opt
        self._to_host(("lp",), o.lp_param_buffer)
        host = o.lp_param_buffer.data
        for t, offset, numel in get_mapping_to_flat_buffer(o._get_parameter_partitions()):
            t.data = host.narrow(0, offset, numel)
        o.fp16_partitioned_groups_flat.clear()  # views of the old storage; reload_states rebuilds them
        o.offloaded_states.add(S.lp_params)

    def reload(self) -> None:
        if not self.offloaded:
            return
        self.engine.reload_states()
        if self.stage == 3:
            for t in self.opt.fp32_partitioned_groups_flat:
                t.data = t.data.to(self.device)
        for state, key in self._adam_states():
            state[key].data = state[key].data.to(self.device)
        for t in self._frozen():
            t.data = t.data.to(self.device)
        self.offloaded = False


class ModuleOffload:
    """Host offload of a plain module (the rollout replica): parameters and buffers."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.device = next(iter(module.parameters())).device
        self.offloaded = False
        self._host: dict[str, torch.Tensor] = {}

    def _tensors(self):
        yield from self.module.named_parameters()
        yield from self.module.named_buffers()

    def state_bytes(self) -> dict[str, dict[str, int]]:
        return {"params": _bytes_by_device(t for _, t in self._tensors())}

    def offload(self) -> None:
        if self.offloaded:
            return
        for name, t in self._tensors():
            buf = self._host.get(name)
            if buf is None:
                buf = self._host[name] = _host_like(t)
            if buf.data_ptr() != t.data_ptr():
                buf.copy_(t.data)
            t.data = buf
        self.offloaded = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def reload(self) -> None:
        if not self.offloaded:
            return
        for _, t in self._tensors():
            t.data = t.data.to(self.device)
        self.offloaded = False
