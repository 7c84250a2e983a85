#!/usr/bin/env bash
# What `make train` (the MetaWorld main job) needs beyond pirl itself, and nothing else:
#   system: EGL + OSMesa and Mesa's software drivers, for MuJoCo's headless rendering
#   python: metaworld and the mujoco it is tested with (pinned with torch so nothing else moves)
# Usage: scripts/install_metaworld_deps.sh [PYTHON]   (default: .venv/bin/python of the repo)
# Env: PIRL_SKIP_APT=1 skips the system packages (no root, or already installed).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-$REPO/.venv/bin/python}"
PKGS=(libegl1 libgl1 libglvnd0 libosmesa6 libgl1-mesa-dri libegl-mesa0)

if [[ "${PIRL_SKIP_APT:-0}" != "1" ]]; then
  missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ "$(id -u)" != 0 ]]; then
      echo "install_metaworld_deps: missing system packages ${missing[*]}; run as root or install them" >&2
      exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0" "mujoco==3.3.0" "metaworld==3.1.1" packaging
# MuJoCo renders headless through EGL here; a first render proves the stack works.
MUJOCO_GL="${MUJOCO_GL:-egl}" "$PY" - <<'PYEOF'
from pirl.envs.metaworld import MetaWorldEnv
env = MetaWorldEnv("reach-v3", image_size=32)
env.reset(0)
print("MetaWorld renders:", env.observe()["main_image"].shape)
env.close()
PYEOF
