"""Shared test fixtures."""
from pathlib import Path

import numpy as np
import pytest

SHM = Path("/dev/shm")


def _ds_shm_buffers() -> set[Path]:
    return set(SHM.glob("deepspeed_allreduce_buffer_*")) if SHM.is_dir() else set()


def _mapped_shm() -> set[str]:
    """/dev/shm paths some live process has mapped (its ranks open each other's buffers)."""
    out: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # the process exited, or is not ours to read
            continue
        out.update(line.split(None, 5)[-1] for line in text.splitlines() if "/dev/shm/deepspeed_allreduce" in line)
    return out


@pytest.fixture(autouse=True)
def _unlink_deepspeed_shm_buffers():
    """DeepSpeed's CPU shm all-reduce leaves one /dev/shm buffer per rank and run (~67 MB
    each) when its ranks are killed (pirl.engine.dist.shutdown unlinks a clean exit's);
    over a `make test` they fill the RAM that /dev/shm lives in and the kernel's OOM killer
    ends the run. Unlink those that appeared during this test and that no live process
    has mapped (another job on the machine may be starting up with its own)."""
    before = _ds_shm_buffers()
    yield
    new = _ds_shm_buffers() - before
    if new:
        in_use = _mapped_shm()
        for path in new:
            if str(path) not in in_use:
                path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory):
    """A tiny SentencePiece model trained on robot prompts (PaliGemma's own can't be downloaded)."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("sp")
    corpus = d / "corpus.txt"
    words = ["pick", "up", "the", "red", "cube", "place", "it", "on", "plate", "open", "drawer", "Task:",
             "State:", "Action:"] + [str(i) for i in range(256)]
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(400)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(d / "tok"), vocab_size=200,
                                   character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                                   minloglevel=2)
    return d / "tok.model"
