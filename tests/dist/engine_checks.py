"""Engine checks that need several ranks (torchrun, gloo). Each rank writes its findings to
OUT/rank{r}.json; tests/test_engine.py asserts on them.

    sync     env 0, rollout 1, actor 2 (fully disjoint): p2p messages arrive as sent; after a
             weight sync the actor's log-probs of the fresh rollout equal the rollout's;
             when the actor's weights move without a sync they differ; a frozen tower is
             sent at version 0 only
    offload  2 actor ranks: training with an offload / reload cycle before every optimizer
             step is bit-identical to training without one (ZeRO-3 and ZeRO-2), with a
             frozen state encoder (what π0's train_expert_only does to its VLM)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pirl.engine.dist import init_distributed

SMALL = ["env.train.total_num_envs=16", "env.eval.total_num_envs=4", "actor.micro_batch_size=16",
         "actor.global_batch_size=32", "runner.val_check_interval=0", "algorithm.update_epoch=1"]


def check_messages(rank: int, device) -> dict:
    """An EnvOutput with uint8 images, bool flags and instructions, rank 0 -> rank 1."""
    from pirl.engine.channels import EnvOutput, env_channel

    g = torch.Generator().manual_seed(3)
    msg = EnvOutput(obs={"states": torch.randn(5, 7, generator=g),
                         "main_images": torch.randint(0, 256, (5, 8, 6, 3), dtype=torch.uint8, generator=g),
                         "task_descriptions": ["pick up the red cube", "", "ouvrir le tiroir é", "x" * 300, "a"]},
                    rewards=torch.randn(5, 3, generator=g), dones=torch.rand(5, 3, generator=g) > 0.5,
                    truncations=torch.rand(5, 3, generator=g) > 0.5, success=torch.rand(5, 3, generator=g) > 0.5,
                    valid=torch.rand(5, generator=g) > 0.5)
    if rank == 0:
        ch = env_channel(1, device)
        ch.send(msg)
        ch.flush()  # in-flight sends need their channel (and tensors) alive until delivered
        return {}
    if rank == 1:
        got = env_channel(0, device).recv()
        same = all(torch.equal(got.obs[k], msg.obs[k]) and got.obs[k].dtype == msg.obs[k].dtype
                   for k in ("states", "main_images"))
        same &= got.obs["task_descriptions"] == msg.obs["task_descriptions"]
        same &= all(torch.equal(getattr(got, k), getattr(msg, k)) for k in ("rewards", "dones", "truncations",
                                                                            "success", "valid"))
        return {"message_equal": bool(same), "final_obs_absent": got.final_obs is None}
    return {}


def check_sync(out: Path) -> dict:
    from pirl.config import load_config
    from pirl.driver import Driver

    info = init_distributed()
    found = check_messages(info.rank, info.device)
    cfg = load_config("reach2d_ppo_flow_sde", None, [
        *SMALL, "cluster.num_gpus_per_node=3", "cluster.component_placement={env: 0, rollout: 1, actor: 2}",
        "actor.model.frozen=[encoder]", f"runner.logger.log_path={out}"], 3)
    d = Driver(cfg, info)
    trainable_bytes = buffer_bytes = 0
    ref = d.actor.module if d.actor is not None else (d.rollout.policy if d.rollout is not None else None)
    if ref is not None:
        trainable_bytes = sum(getattr(p, "ds_numel", p.numel()) * 4 for n, p in ref.named_parameters()
                              if n in d.weights.trainable)
        all_bytes = sum(getattr(p, "ds_numel", p.numel()) * 4 for p in ref.parameters())
        buffer_bytes = sum(b.numel() * b.element_size() for b in ref.buffers())
        found.update(trainable_bytes=trainable_bytes + buffer_bytes, all_bytes=all_bytes + buffer_bytes)
    rounds = []
    for step in ("synced", "stale", "resynced"):
        sync = d.sync_weights() if step != "stale" else {}
        if step == "stale" and d.actor is not None:  # move the actor's weights without telling the rollout
            import deepspeed

            p = d.actor.module.velocity_out.weight
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                p.data.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(9)))
        batch, _ = d.collect()
        m = d.train(batch)
        d.iteration += 1
        rounds.append({"step": step, "diff": m.get("actor/sync_logprob_diff"), "sync": sync,
                       "version": d.weights.version if d.weights is not None else None})
    found["rounds"] = rounds
    d.close()
    return found


def check_offload(out: Path, stage: int) -> dict:
    from omegaconf import OmegaConf

    from pirl.config.schema import PirlConfig
    from pirl.engine.actor import ActorEngine
    from pirl.engine.offload import ActorOffload
    from pirl.models import build_policy

    info = init_distributed()
    ds = json.loads((Path(__file__).resolve().parents[2] / "ds_configs" / f"zero{stage}.json").read_text())
    if stage == 3:
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # really shard this small model
    path = out / f"zero{stage}_rank{info.rank}.json"
    path.write_text(json.dumps(ds))
    result: dict = {}
    for cycle in (False, True, "poison"):
        cfg = OmegaConf.structured(PirlConfig)
        cfg.actor.ds_config = str(path)
        cfg.actor.micro_batch_size, cfg.actor.global_batch_size = 4, 8
        cfg.actor.optim.lr = 1e-2
        cfg.actor.model.hidden_dim = 32
        cfg.actor.model.action_dim, cfg.actor.model.num_action_chunks = 2, 4  # D, H below
        torch.manual_seed(0)
        policy = build_policy(cfg.actor.model, state_dim=11)
        for name, p in policy.named_parameters():
            if name.startswith("encoder."):
                p.requires_grad_(False)
        actor = ActorEngine(policy, cfg.actor, info.world_size, total_steps=5)
        off = ActorOffload(actor.engine)
        g = torch.Generator().manual_seed(1)
        K, H, D = 4, 4, 2

        def loss_fn(engine, b):
            ev = engine(b["fi"], b["replay"])
            return -(ev.logprob.sum(dim=(1, 2)) * b["adv"]).mean() + (ev.values ** 2).mean(), {}

        bytes_log = []
        for step in range(5):
            states = torch.randn(8, 11, generator=g)
            chains = torch.randn(8, K + 1, H, D, generator=g)
            mask = torch.nn.functional.one_hot(torch.randint(0, K, (8,), generator=g), K).bool()
            adv = torch.randn(8, generator=g)
            lo = info.rank * 4
            mb = {"fi": {"states": states[lo:lo + 4]}, "replay": {"chains": chains[lo:lo + 4],
                                                                  "step_mask": mask[lo:lo + 4]}, "adv": adv[lo:lo + 4]}
            if cycle and step > 0:  # states exist after the first step
                before = off.state_tensors()
                ptrs = {k: [t.data_ptr() for t in v] for k, v in before.items()}
                off.offload()
                if cycle == "poison" and step == 1:  # training must read the moved storage back
                    for buf in off._host.values():
                        buf.add_(1e-3)
                moved = off.state_tensors()
                bytes_log.append({k: {"bytes": sum(t.numel() * t.element_size() for t in v),
                                      "moved": sum(a != t.data_ptr() for a, t in zip(ptrs[k], v)),
                                      "count": len(v), "devices": sorted({str(t.device) for t in v})}
                                  for k, v in moved.items()})
                off.reload()
            actor.train_step([mb], loss_fn)
        replica = build_policy(cfg.actor.model, state_dim=11)
        actor.copy_weights_to(replica)
        weights = {k: v.clone() for k, v in replica.state_dict().items()}
        result["poison" if cycle == "poison" else "cycle" if cycle else "plain"] = weights
        if cycle is True:
            result["bytes"] = bytes_log
    same = all(torch.equal(result["plain"][k], result["cycle"][k]) for k in result["plain"])
    poisoned_differs = any(not torch.equal(result["plain"][k], result["poison"][k]) for k in result["plain"])
    moved_far = max(float((result["cycle"][k] - torch.zeros_like(result["cycle"][k])).abs().max())
                    for k in result["cycle"])
    return {"identical": same, "nonzero": moved_far > 0, "poisoned_differs": poisoned_differs,
            "bytes": result["bytes"], "stage": stage}


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "sync":
        found = check_sync(out)
    else:
        found = check_offload(out, int(mode.removeprefix("offload")))
    rank = dist.get_rank() if dist.is_initialized() else 0
    (out / f"rank{rank}.json").write_text(json.dumps(found, default=str))
    if dist.is_initialized():
        dist.barrier()


if __name__ == "__main__":
    main()
