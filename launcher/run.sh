#!/usr/bin/env bash
# Launch a pirl experiment with the DeepSpeed launcher (docs/multinode.md).
#
#   launcher/run.sh CONFIG_NAME [key=value ...]
#   launcher/run.sh --write-env        only write .deepspeed_env (then `deepspeed --hostfile ...` by hand)
#
# Hosts and slots come from $PIRL_HOSTFILE (default launcher/hosts, "localhost slots=2").
# A hostfile naming only this machine runs without ssh. One naming other hosts takes
# DeepSpeed's pdsh/ssh path; every host needs this checkout and its .venv at the same path,
# and runner.logger.log_path must be on a filesystem they all share (checkpoints).
# Before any rank starts: the config is validated for the hostfile's world size, and on
# several hosts pdsh, ssh to each host and the checkout there are checked.
#
# Environment read here: PIRL_HOSTFILE, PIRL_PYTHON, MASTER_ADDR (default: the first host's
# address, which DeepSpeed asks it for with `hostname -I`), MASTER_PORT (default: a free
# one), DS_ENV_FILE (default .deepspeed_env in the checkout), GLOO_SOCKET_IFNAME /
# NCCL_SOCKET_IFNAME (the interface the hosts reach each other on), OMP_NUM_THREADS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOSTFILE="${PIRL_HOSTFILE:-$ROOT/launcher/hosts}"
PY="${PIRL_PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"
DS_ENV="${DS_ENV_FILE:-$ROOT/.deepspeed_env}"
[[ "$DS_ENV" == /* ]] || DS_ENV="$ROOT/$DS_ENV"

# No GPU: DeepSpeed's CPU accelerator (gloo). Compiled C++ ops are cached across runs.
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export DS_ACCELERATOR=cpu
fi
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
export PYTHONUNBUFFERED=1
# torch.distributed deprecation notices from inside DeepSpeed, once per collective call
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"

# DeepSpeed's pdsh runner forwards only PYTHON*, NCCL* (on CUDA) and a few more to the
# other hosts; everything else a rank needs goes through this file, which it reads from
# the working directory (or $DS_ENV_FILE) and exports on every host.
FORWARD=(DS_ACCELERATOR TORCH_EXTENSIONS_DIR GLOO_SOCKET_IFNAME NCCL_SOCKET_IFNAME TP_SOCKET_IFNAME
         PATH LD_LIBRARY_PATH OMP_NUM_THREADS MKL_NUM_THREADS MUJOCO_GL PYOPENGL_PLATFORM HF_HOME
         WANDB_MODE WANDB_API_KEY TRITON_CACHE_DIR)
write_ds_env() {
  local tmp="$DS_ENV.tmp.$$" v
  : > "$tmp"
  for v in "${FORWARD[@]}"; do
    if [[ -n "${!v:-}" ]]; then printf '%s=%s\n' "$v" "${!v}" >> "$tmp"; fi
  done
  mv "$tmp" "$DS_ENV"
}

if [[ "${1:-}" == "--write-env" ]]; then
  write_ds_env
  echo "launcher/run.sh: wrote $DS_ENV"
  exit 0
fi
if [[ $# -lt 1 ]]; then
  echo "usage: launcher/run.sh CONFIG_NAME [key=value ...] | launcher/run.sh --write-env" >&2
  exit 2
fi
CONFIG="$1"; shift
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

cd "$ROOT"
"$PY" train.py --config-name "$CONFIG" --world-size "$WORLD" --dry-run "$@" >/dev/null

PORT="${MASTER_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}"
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

# Several hosts: DeepSpeed's own pre-launch check only tries the first host; check all of them.
if ! command -v pdsh >/dev/null; then
  echo "launcher/run.sh: $HOSTFILE names several hosts, which DeepSpeed reaches with pdsh: install it (apt-get install pdsh)" >&2
  exit 2
fi
for h in "${HOSTS[@]}"; do
  if ! ssh -o BatchMode=yes -o ConnectTimeout=10 "$h" true </dev/null; then
    echo "launcher/run.sh: cannot ssh to $h without a password (docs/multinode.md: ssh set-up)" >&2
    exit 2
  fi
  if ! ssh -o BatchMode=yes "$h" test -x "$PY" -a -f "$ROOT/train.py" </dev/null; then
    echo "launcher/run.sh: $h has no $PY or $ROOT/train.py: every host needs this checkout at the same path" >&2
    exit 2
  fi
done
if [[ -z "${GLOO_SOCKET_IFNAME:-}${NCCL_SOCKET_IFNAME:-}" ]]; then
  echo "launcher/run.sh: note: GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME unset; ranks pick the interface of their hostname's address" >&2
fi
write_ds_env
MASTER=()
[[ -n "${MASTER_ADDR:-}" ]] && MASTER=(--master_addr "$MASTER_ADDR")
exec "$DS" --hostfile "$HOSTFILE" "${MASTER[@]}" --master_port "$PORT" \
  train.py --config-name "$CONFIG" "$@"
