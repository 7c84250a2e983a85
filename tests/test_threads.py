"""CPU threads per rank (pirl/engine/threads.py): the host's cores shared over its ranks,
the config key overriding, applied to torch and to what reads the environment."""
import os

import pytest
import torch

from pirl.engine import threads


@pytest.mark.parametrize("env, expected", [
    ({"LOCAL_WORLD_SIZE": "2"}, 8), ({"LOCAL_SIZE": "4"}, 4), ({"SLURM_NTASKS_PER_NODE": "16"}, 1), ({}, 16)])
def test_share_of_the_host(monkeypatch, env, expected):
    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(threads, "host_cores", lambda: 16)
    n, why = threads.threads_per_rank(None)
    assert n == expected and why == f"16 cores / {16 // expected if expected > 1 else 16} ranks on this host"


def test_config_overrides_and_bad_values(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.threads_per_rank(3) == (3, "cluster.threads_per_rank")
    with pytest.raises(ValueError, match="cluster.threads_per_rank must be >= 1"):
        threads.threads_per_rank(0)


def test_apply_sets_torch_and_the_environment(monkeypatch):
    before = torch.get_num_threads()
    for key in threads.THREAD_ENV_VARS:
        monkeypatch.delenv(key, raising=False)
    try:
        threads.apply_threads(1)
        assert torch.get_num_threads() == 1
        assert all(os.environ[k] == "1" for k in threads.THREAD_ENV_VARS)  # env workers, llvmpipe
    finally:
        torch.set_num_threads(before)
