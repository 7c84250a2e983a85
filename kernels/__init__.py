"""Triton kernels for flow-policy RL, installed as `pirl.kernels`."""
