# The two commands of the README. Both set up everything from nothing and reuse what is there.
#   make train   venv + install + the main job: a few-shot supervised warm start (scripted-expert
#                demos, flow matching), then flow-SDE PPO on reach2d, 2 ranks via the DeepSpeed launcher
#   make test    venv + install (simulators and system packages included) + the whole test suite;
#                --instafail prints each failure as it happens, so a run cut short still shows it
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= reach2d_learn_ppo_flow_sde
WARM   := results/warm_start/$(CONFIG)
ARGS   ?=

.PHONY: install sim cluster train test test-fast test-parity lint clean
install: $(VENV)/.pirl-installed
sim: $(VENV)/.sim-installed
cluster: $(VENV)/.cluster-installed

# torch is installed first and pinned: on a machine without CUDA it is the CPU build, and
# nothing installed after it may replace it with a CUDA build.
$(VENV)/.pirl-installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]" "torch==2.13.0"
	touch $@

$(VENV)/.sim-installed: $(VENV)/.pirl-installed scripts/install_sim_deps.sh
	bash scripts/install_sim_deps.sh $(PY)
	touch $@

# sshd, pdsh, iproute2, slurm-wlm, munge: the cluster tier's hosts and daemons
$(VENV)/.cluster-installed: $(VENV)/.pirl-installed scripts/install_cluster_deps.sh
	bash scripts/install_cluster_deps.sh
	touch $@

train: install
	$(PY) -m pirl.sft --config-name $(CONFIG) --out $(WARM) --episodes 2
	launcher/run.sh $(CONFIG) actor.model.model_path=$(abspath $(WARM)) $(ARGS)

FAST := not sim and not dist and not e2e and not cluster and not parity

test: install sim cluster
	$(PY) -m pytest -q --instafail -m "not parity" tests $(ARGS)

# The fast tier (pytest.ini markers): no simulators, no multi-process or daemon tiers.
test-fast: install
	$(PY) -m pytest -q --instafail -m "$(FAST)" tests $(ARGS)

# π0 / π0.5 parity against lerobot 0.6.1 itself, in its own Python 3.12 venv (torch 2.11 from
# PyPI, ~5 GB, made once under .cache/ by scripts/make_parity_venv.sh). Not part of `make test`.
PARITY_VENV := .cache/lerobot-venv
test-parity:
	bash scripts/make_parity_venv.sh $(PARITY_VENV)
	$(PARITY_VENV)/bin/python -m pytest -q -m parity tests/parity $(ARGS)

# ruff (ruff.toml) over everything, mypy (mypy.ini) over the package, kernels and benches.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .cache results
