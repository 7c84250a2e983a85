"""Train flow_mlp for a few optimizer steps on a fixed random global batch under a given
DeepSpeed JSON; each rank takes its slice of every global batch. Rank 0 saves the final
(gathered) parameters. Run with 1 process and with 2 (torchrun) and compare."""
import sys

import torch
from omegaconf import OmegaConf

from pirl.config.schema import PirlConfig
from pirl.engine.dist import init_distributed


def main(ds_config: str, out: str, steps: int = 4, inject_nan_at: int = -1) -> None:
    info = init_distributed()
    from pirl.engine.actor import ActorEngine
    from pirl.models import build_policy

    cfg = OmegaConf.structured(PirlConfig)
    cfg.actor.ds_config = ds_config
    cfg.actor.micro_batch_size = 4
    cfg.actor.global_batch_size = 8
    cfg.actor.optim.lr = 1e-2
    cfg.actor.optim.value_lr = 3e-2
    cfg.actor.model.hidden_dim = 32
    cfg.actor.model.action_dim, cfg.actor.model.num_action_chunks = 2, 4  # D, H below
    torch.manual_seed(0)
    policy = build_policy(cfg.actor.model, state_dim=11)
    actor = ActorEngine(policy, cfg.actor, info.world_size, total_steps=steps)

    g = torch.Generator().manual_seed(1)
    G, K, H, D = 8, 4, 4, 2
    per_rank = G // info.world_size
    mb = per_rank // actor.grad_accum

    def loss_fn(engine, b):
        ev = engine(b["fi"], {"chains": b["chains"], "step_mask": b["mask"]})
        lp = ev.logprob.sum(dim=(1, 2))
        loss = -(lp * b["adv"]).mean() + ((ev.values - b["ret"]) ** 2).mean()
        return loss * b["scale"], {"loss": float(loss.detach())}

    replica = build_policy(cfg.actor.model, state_dim=11)
    snapshots = []
    for step in range(steps):
        states = torch.randn(G, 11, generator=g)
        chains = torch.randn(G, K + 1, H, D, generator=g)
        mask = torch.nn.functional.one_hot(torch.randint(0, K, (G,), generator=g), K).bool()
        adv, ret = torch.randn(G, generator=g), torch.randn(G, generator=g)
        lo = info.rank * per_rank
        scale = float("nan") if step == inject_nan_at else 1.0
        mbs = [{"fi": {"states": states[lo + i * mb: lo + (i + 1) * mb]},
                "chains": chains[lo + i * mb: lo + (i + 1) * mb], "mask": mask[lo + i * mb: lo + (i + 1) * mb],
                "adv": adv[lo + i * mb: lo + (i + 1) * mb], "ret": ret[lo + i * mb: lo + (i + 1) * mb],
                "scale": scale} for i in range(actor.grad_accum)]
        metrics = actor.train_step(mbs, loss_fn)
        actor.copy_weights_to(replica)
        snapshots.append({k: v.clone() for k, v in replica.state_dict().items()})
    if info.rank == 0:
        torch.save({"snapshots": snapshots, "skipped": metrics["actor/skipped_steps"],
                    "zero_stage": actor.zero_stage}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else -1)
