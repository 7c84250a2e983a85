"""Shared test fixtures."""
from pathlib import Path

import numpy as np
import pytest

SHM = Path("/dev/shm")


def _ds_shm_buffers() -> set[Path]:
    return set(SHM.glob("deepspeed_allreduce_buffer_*")) if SHM.is_dir() else set()


@pytest.fixture(autouse=True)
def _unlink_deepspeed_shm_buffers():
    """DeepSpeed's CPU shm all-reduce leaves one /dev/shm buffer per rank and run (~67 MB
    each) when its ranks exit or are killed; over a `make test` they fill the RAM that
    /dev/shm lives in and the kernel's OOM killer ends the run. Unlink those this test's
    processes created (they have exited by the test's end)."""
    before = _ds_shm_buffers()
    yield
    for path in _ds_shm_buffers() - before:
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
