#!/usr/bin/env bash
# The lerobot 0.6.1 environment of the parity test (tests/parity/): Python 3.12 (lerobot
# declares >=3.12; pirl's own venv is 3.11), torch 2.11 / torchvision 0.26 from PyPI
# (lerobot needs torch<2.12; this is a CUDA build of ~5 GB that runs on the CPU), and
# pirl itself installed without its dependencies, so the test imports both libraries in
# one process. Made once under .cache/ and reused; a marker file records a finished install.
#   bash scripts/make_parity_venv.sh [VENV_DIR]
set -euo pipefail
VENV=${1:-.cache/lerobot-venv}
MARK="$VENV/.parity-installed"
[ -f "$MARK" ] && exit 0
PY312=${PY312:-}
if [ -z "$PY312" ]; then
    # pyenv's shim for python3.12 exists even where 3.12 is not the active version, and
    # then fails: take the first candidate that runs.
    for c in "$(pyenv root 2>/dev/null)/versions/3.12.1/bin/python3.12" python3.12; do
        if "$c" -c "import sys; assert sys.version_info[:2] == (3, 12)" >/dev/null 2>&1; then PY312=$c; break; fi
    done
fi
[ -n "$PY312" ] || { echo "make_parity_venv: no python3.12 found (lerobot 0.6.1 needs Python >= 3.12); set PY312=" >&2; exit 1; }
test -x "$VENV/bin/python" || "$PY312" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "lerobot[pi]==0.6.1" "torch==2.11.*" "torchvision==0.26.*" \
    "sentencepiece" "protobuf" "pytest" "pytest-timeout" "omegaconf>=2.3" "tensorstore" "msgpack"
# pirl without its pins (they would replace lerobot's torch): it needs only what lerobot brings.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
touch "$MARK"
