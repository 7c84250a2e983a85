"""pirl vs lerobot 0.6.1, measured: the parity test's tiny models and inputs
(tests/parity/test_lerobot_parity.py), errors printed instead of asserted.

    .cache/lerobot-venv/bin/python bench/lerobot_parity.py      # after `make test-parity` made the venv

Rows: a lerobot checkpoint loaded by pirl (π0, π0.5), the π0 one after one lerobot training
step, and pirl's lerobot export loaded back by lerobot. Columns: max |Δv| / max |v| over the
10 denoise steps of lerobot's sample_actions, and the max absolute difference of the sampled
actions (model units).
"""
from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "parity"))
import test_lerobot_parity as P  # noqa: E402

from pirl.models.pi0 import build_pi0_policy  # noqa: E402


def main() -> None:
    warnings.simplefilter("ignore")
    rows = []
    with P.tiny_sizes(), tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        tok = P.make_tokenizer(d / "tok")
        for kind in ("pi0", "pi05"):
            lr = P._lerobot_policy(kind, seed=0)
            policy = build_pi0_policy(P._run_config(kind, P._save_lerobot(lr, kind, d / kind, tok, seed=0))).eval()
            rows.append((f"{kind}: lerobot -> pirl", P.parity_errors(policy, lr, kind, seed=1)))
            with torch.no_grad():
                for p in policy.model.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
            cls = P.modeling_pi0.PI0Policy if kind == "pi0" else P.modeling_pi05.PI05Policy
            back = cls.from_pretrained(policy.export(d / f"{kind}_export", "lerobot"), strict=True).eval()
            rows.append((f"{kind}: pirl export -> lerobot", P.parity_errors(policy, back, kind, seed=9)))
        lr = P._lerobot_policy("pi0", seed=4, optimizer_lr=1e-2)
        P.one_training_step(lr, tok, seed=4)
        policy = build_pi0_policy(P._run_config("pi0", P._save_lerobot(lr, "pi0", d / "trained", tok, seed=4))).eval()
        rows.append(("pi0: lerobot after 1 training step -> pirl", P.parity_errors(policy, lr, "pi0", seed=6)))
    print(f"{'case':46s} {'max|dv|/max|v|':>15s} {'max|da|':>10s}")
    for name, e in rows:
        print(f"{name:46s} {e['velocity']:15.2e} {e['actions']:10.2e}")


if __name__ == "__main__":
    main()
