"""Experiment configuration in the reference system's layout: typed schema, composition by
hydra-core (defaults lists with group@package, `${...}`, overrides), the reference
system's keys pirl maps or refuses, validation and derived sizes.

    from pirl.config import load_config, derived_sizes, format_dry_run
    cfg = load_config("reach2d_ppo_flow_sde", overrides=["actor.optim.lr=1e-4"], world_size=2)
    print(format_dry_run(cfg, derived_sizes(cfg, 2)))

Command line check of a config: `python -m pirl.config.compose --config-name NAME
[--world-size N] [key=value ...]`.
"""
import importlib

# name -> submodule (`validate` and `compose` the functions stay in their modules: the
# package attribute of those names is the submodule). Loaded on first use (PEP 562) so that `python -m
# pirl.config.compose` does not find its own module already imported by the package.
_EXPORTS = {
    "ConfigError": "validate",
    "ConfigNotice": "reference",
    "load_job": "compose",
    "apply_hydra_runtime": "compose",
    "REPO_ROOT": "validate",
    "PirlConfig": "schema",
    "build_arg_parser": "compose",
    "load_config": "compose",
    "derived_sizes": "derived",
    "format_dry_run": "derived",
    "world_size_of": "derived",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pirl.config' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pirl.config.{_EXPORTS[name]}"), name)
