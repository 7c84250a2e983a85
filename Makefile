# The two commands of the README. Both set up everything from nothing and reuse what is there.
#   make train   venv + install (MetaWorld and its system packages only) + the main job: a tiny π0
#                from random weights, SFT on a few scripted MetaWorld episodes with camera images,
#                flow-SDE PPO on 2 ranks via the DeepSpeed launcher (ZeRO-3), then eval before / after;
#                prints and saves the per-task table (results/quickstart/before_after.md).
#                make train CONFIG=reach2d_learn_ppo_flow_sde runs the same steps on reach2d.
#   make test    venv + install (simulators and system packages included) + the whole test suite;
#                --instafail prints each failure as it happens, so a run cut short still shows it
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= metaworld_quickstart_ppo_openpi
SEED   ?= 0
RUN    ?= results/quickstart$(if $(filter metaworld_quickstart_ppo_openpi,$(CONFIG)),,_$(CONFIG))
ARGS   ?=
# Few demonstrations on purpose (a mediocre warm start for RL to improve); ZeRO-2 for the
# short SFT (ZeRO-3 costs ~10x a step on a model of many tiny tensors), the RL run's own
# ds_config (ZeRO-3) after it.
ifneq ($(filter reach2d%,$(CONFIG)),)
SFT_ARGS ?= --episodes 2 --steps 1500
SIM_DEP  :=
else
SFT_ARGS ?= --episodes 2 --num-envs 8 --steps 250 --batch-size 64 actor.ds_config=ds_configs/zero2.json
SIM_DEP  := $(VENV)/.metaworld-installed
endif
EVAL_ARGS ?= --episodes 10

.PHONY: install sim metaworld cluster train test test-fast test-parity lint clean
install: $(VENV)/.pirl-installed
sim: $(VENV)/.sim-installed
metaworld: $(VENV)/.metaworld-installed
cluster: $(VENV)/.cluster-installed

# torch is installed first and pinned: on a machine without CUDA it is the CPU build, and
# nothing installed after it may replace it with a CUDA build.
$(VENV)/.pirl-installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]" "torch==2.13.0"
	touch $@ $(VENV)/.core-installed

# pirl without the dev tools: what `make train` needs (it installs nothing it does not use).
$(VENV)/.core-installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -e . "torch==2.13.0"
	touch $@

$(VENV)/.sim-installed: $(VENV)/.pirl-installed scripts/install_sim_deps.sh
	bash scripts/install_sim_deps.sh $(PY)
	touch $@

# sshd, pdsh, iproute2, slurm-wlm, munge: the cluster tier's hosts and daemons
$(VENV)/.cluster-installed: $(VENV)/.pirl-installed scripts/install_cluster_deps.sh
	bash scripts/install_cluster_deps.sh
	touch $@

# MetaWorld alone (make train's simulator): its Python package and MuJoCo's EGL/OSMesa libraries.
$(VENV)/.metaworld-installed: $(VENV)/.core-installed scripts/install_metaworld_deps.sh
	bash scripts/install_metaworld_deps.sh $(PY)
	touch $@

# SFT -> eval -> PPO (launcher, 2 ranks) -> eval -> before/after table. SEED varies every
# random choice of the job (demos, initial weights, rollouts); bench/quickstart.py runs 3.
train: $(VENV)/.core-installed $(SIM_DEP)
	$(PY) -m pirl.sft --config-name $(CONFIG) --out $(RUN)/sft --seed $(SEED) $(SFT_ARGS) runner.logger.log_path=$(RUN)
	$(PY) -m pirl.eval --config-name $(CONFIG) --checkpoint $(RUN)/sft --out $(RUN)/eval_sft $(EVAL_ARGS)
	launcher/run.sh $(CONFIG) actor.model.model_path=$(abspath $(RUN)/sft) runner.logger.log_path=$(RUN) \
	  runner.seed=$(SEED) runner.eval_before_train=False $(ARGS)
	$(PY) -m pirl.eval --config-name $(CONFIG) --checkpoint $(RUN)/$(CONFIG)/policy --out $(RUN)/eval_rl $(EVAL_ARGS)
	$(PY) -m pirl.eval --compare $(RUN)/eval_sft/eval.json $(RUN)/eval_rl/eval.json --out $(RUN)/before_after.md

FAST := not sim and not dist and not e2e and not cluster and not parity

test: install sim cluster
	$(PY) -m pytest -q --instafail --durations=25 -m "not parity" tests $(ARGS)

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
