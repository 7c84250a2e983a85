"""Shared test fixtures."""
import numpy as np
import pytest


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
