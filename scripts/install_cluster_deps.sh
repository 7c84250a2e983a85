#!/usr/bin/env bash
# System packages of the multi-node paths and of the `cluster` test tier (Debian/Ubuntu):
#   openssh-server + openssh-client  sshd of the test's virtual hosts; ssh for DeepSpeed's pdsh runner
#   pdsh                             how `deepspeed --hostfile` starts ranks on other hosts
#   iproute2                         network namespaces (the tests' hosts)
#   slurm-wlm + munge                slurmctld / slurmd / sbatch for launcher/slurm/ (services not started)
# Env: PIRL_SKIP_APT=1 skips it (no root, or already installed).
set -euo pipefail
[[ "${PIRL_SKIP_APT:-0}" == "1" ]] && exit 0
PKGS=(openssh-server openssh-client pdsh iproute2 slurm-wlm munge)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
