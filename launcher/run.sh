#!/usr/bin/env bash
# Launch a pirl experiment with the DeepSpeed launcher.
#
#   launcher/run.sh CONFIG_NAME [key=value ...]
#
# Hosts and slots come from $PIRL_HOSTFILE (default launcher/hosts, "localhost slots=2").
# A hostfile naming only this machine runs without ssh; one naming other hosts uses the
# DeepSpeed launcher's pdsh/ssh path (every host needs this repo at the same path).
# The config is validated for the hostfile's world size BEFORE any rank starts.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 1 ]]; then
  echo "usage: launcher/run.sh CONFIG_NAME [key=value ...]" >&2
  exit 2
fi
CONFIG="$1"; shift
HOSTFILE="${PIRL_HOSTFILE:-$ROOT/launcher/hosts}"
PY="${PIRL_PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"
if [[ ! -f "$HOSTFILE" ]]; then
  echo "launcher/run.sh: hostfile $HOSTFILE not found" >&2
  exit 2
fi

# world size = sum of slots; hosts in file order (comments and blank lines skipped)
mapfile -t HOSTS < <(awk '!/^[[:space:]]*(#|$)/ {print $1}' "$HOSTFILE")
WORLD=$(awk '!/^[[:space:]]*(#|$)/ { n = 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, a, "="); n = a[2] } s += n } END { print s + 0 }' "$HOSTFILE")
if [[ "$WORLD" -lt 1 ]]; then
  echo "launcher/run.sh: $HOSTFILE names no host" >&2
  exit 2
fi

# No GPU: DeepSpeed's CPU accelerator (gloo). Compiled C++ ops are cached across runs.
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export DS_ACCELERATOR=cpu
fi
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
export PYTHONUNBUFFERED=1
# torch.distributed deprecation notices from inside DeepSpeed, once per collective call
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"

cd "$ROOT"
"$PY" train.py --config-name "$CONFIG" --world-size "$WORLD" --dry-run "$@" >/dev/null

PORT="${MASTER_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
LOCAL=1
for h in "${HOSTS[@]}"; do
  [[ "$h" == localhost || "$h" == 127.0.0.1 || "$h" == "$(hostname)" ]] || LOCAL=0
done
DS="$(dirname "$PY")/deepspeed"
[[ -x "$DS" ]] || DS="deepspeed"
if [[ "$LOCAL" == 1 && "${#HOSTS[@]}" == 1 ]]; then
  exec "$DS" --hostfile "$HOSTFILE" --no_ssh --node_rank 0 --master_addr 127.0.0.1 \
    --master_port "$PORT" train.py --config-name "$CONFIG" "$@"
fi
# Multi-host: the runner forwards only a few variables; the rest go through .deepspeed_env.
exec "$DS" --hostfile "$HOSTFILE" --master_addr "${MASTER_ADDR:-${HOSTS[0]}}" --master_port "$PORT" \
  train.py --config-name "$CONFIG" "$@"
