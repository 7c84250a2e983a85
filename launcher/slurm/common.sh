# Sourced by the batch scripts in launcher/slurm/ (docs/multinode.md "SLURM").
#   pirl_setup WORLD_SIZE CONFIG [key=value ...]   environment, rendezvous, log folder, config check
# After it: $ROOT, $PY, $LOG_DIR, MASTER_ADDR / MASTER_PORT exported, PIRL_ARGS (the train.py
# arguments, with runner.resume_dir=auto first so a requeued or resubmitted job continues
# from its newest complete checkpoint; a later runner.resume_dir=... on the command line wins).

pirl_setup() {
  local world="$1" config="$2"
  shift 2
  ROOT="${PIRL_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}"
  PY="${PIRL_PYTHON:-$ROOT/.venv/bin/python}"
  cd "$ROOT"

  # One folder per job: this script's output and one log per task.
  LOG_DIR="${PIRL_SLURM_LOGS:-$ROOT/results/slurm}/${SLURM_JOB_NAME:-pirl}-${SLURM_JOB_ID}"
  mkdir -p "$LOG_DIR"
  exec > >(tee -a "$LOG_DIR/batch.log") 2>&1
  echo "pirl: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}, $world ranks, logs in $LOG_DIR"
  trap 'echo "pirl: job $SLURM_JOB_ID ended with status $?"' EXIT

  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    export DS_ACCELERATOR=cpu
  fi
  export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
  export PYTHONUNBUFFERED=1
  export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"

  # Rendezvous: the first node of the allocation, at the address slurm.conf gives it
  # (NodeAddr; the node name itself where they agree). The port follows the job id, so
  # two jobs sharing a node do not collide.
  local first addr
  first="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
  addr="$(scontrol show node "$first" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)"
  export MASTER_ADDR="${MASTER_ADDR:-${addr:-$first}}"
  export MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"

  PIRL_ARGS=(--config-name "$config" runner.resume_dir=auto "$@")
  # A bad config fails here, in seconds, not after every rank has started.
  "$PY" train.py "${PIRL_ARGS[@]}" --world-size "$world" --dry-run >/dev/null
}
