"""Hydra-style composition with plain omegaconf: defaults lists, `${...}` interpolation,
`key=value` overrides, merged into the typed schema (`pirl.config.schema.PirlConfig`).

Layout of a config directory (default: configs/ of the repo):

    configs/reach2d_ppo_flow_sde.yaml      an experiment
    configs/model/flow_mlp.yaml            group `model`, option `flow_mlp`
    configs/env/reach2d.yaml  configs/algorithm/ppo_flow_sde.yaml  configs/cluster/local.yaml

An experiment starts with a defaults list, merged in order:

    defaults:
      - model: flow_mlp          # configs/model/flow_mlp.yaml
      - env: reach2d
      - algorithm: ppo_flow_sde
      - cluster: local
      - other_experiment         # a plain name: configs/other_experiment.yaml (inherit)
      - _self_                   # this file's own keys (last when not listed)

Group files are NOT mounted anywhere: they write full paths from the root
(`actor: {model: {...}}`), so a group may set keys across the tree (the env group sets
`actor.model.action_dim`, the GRPO group `env.train.group_size`) and every key reads the
same in every file. A group file may have its own defaults list.

Merge rules: mappings merge key by key, lists and scalars replace, except
`cluster.component_placement`, which a file or a whole-value override replaces (merging
`env,rollout,actor: all` with `env: 0-3` would place env twice).

Overrides (command line): `actor.optim.lr=1e-6`, `env.train.task=PickCube-v1`,
`actor.model.trainable=[a,b]`, `runner.resume_dir=null`,
`cluster.component_placement={env: 0-3, rollout: 4-7, actor: 0-7}` (values are YAML: quote
joined keys in a flow mapping, `{'env,rollout,actor': all}`), and group choices
`model=pi0_tiny`. Every key must exist in the schema: there is no `+key`.

The old `trainer.logger.wandb` block (OpenVLA seed doc) is read as an alias of
`runner.logger`: `enable` adds or removes "wandb" in `logger_backends`, `project_name`
and `experiment_name` map one to one. It warns with the new spelling.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import re
import sys
import typing
import warnings
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pirl.config.derived import derived_sizes, format_dry_run, world_size_of
from pirl.config.schema import PirlConfig
from pirl.config.validate import REPO_ROOT, ConfigError, check_paths, validate

DEFAULT_CONFIG_DIR = REPO_ROOT / "configs"
DEFAULTS_KEY = "defaults"
SELF = "_self_"
REPLACED_ON_MERGE = ("cluster.component_placement",)
LEGACY_WANDB = ("trainer", "logger", "wandb")
LEGACY_WANDB_KEYS = ("enable", "project_name", "experiment_name")


# ------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (`1e-6` is a float, as in omegaconf), no
    timestamps, and duplicate keys as errors."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in _Loader.yaml_implicit_resolvers.items()}


def parse_yaml_value(text: str) -> Any:
    """An override's value, typed as YAML types it (`4` int, `1e-6` float, `[a,b]` list,
    `null`, `{env: 0-3}` mapping); an empty value is an empty string."""
    return yaml.load(text, Loader=_Loader) if text.strip() else ""


def display(path: Path) -> str:
    """A path as the user would type it: relative to the repo root or cwd when inside."""
    path = Path(path).resolve()
    for root in (Path.cwd(), REPO_ROOT):
        try:
            return str(path.relative_to(root))
        except ValueError:
            continue
    return str(path)


def load_yaml(path: Path) -> dict:
    """A config file's top-level mapping ({} for an empty file)."""
    try:
        data = yaml.load(Path(path).read_text(), Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{display(path)}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{display(path)}: expected a mapping of keys at the top, "
                          f"got {type(data).__name__}")
    return data


# ------------------------------------------------------------------- schema walk

def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _strip_optional(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return tp, False


def schema_paths(cls=PirlConfig, prefix: str = "") -> list[str]:
    """Every key of the schema, sections included ("actor", "actor.model", ...)."""
    out = []
    for name, tp in _fields(cls).items():
        path = f"{prefix}{name}"
        out.append(path)
        inner, _ = _strip_optional(tp)
        if dataclasses.is_dataclass(inner):
            out.extend(schema_paths(inner, path + "."))
    return out


def _suggest(path: str) -> str:
    """'; did you mean X?' for an unknown dotted key: the same name in another section
    first (the seeds' bare `rollout_epoch`), then a close sibling, then the closest full
    key."""
    all_paths = schema_paths()
    parent, _, name = path.rpartition(".")
    same = [p for p in all_paths if p.rpartition(".")[2] == name]
    if same:
        return f"; did you mean {same[0]}?"
    siblings = [p.rpartition(".")[2] for p in all_paths if p.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {parent + '.' if parent else ''}{close[0]}?"
    close = difflib.get_close_matches(path, all_paths, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _unknown(path: str, where: str) -> ConfigError:
    return ConfigError(f"unknown key {path}{_suggest(path)} ({where})")


_TYPE_NAMES = {int: "an int", float: "a number", bool: "a bool (True/False)",
               str: "a string", list: "a list", dict: "a mapping"}


def _check_value(value: Any, tp: Any, path: str, where: str) -> None:
    """Type of one value against its schema annotation; recurses into sections.
    Interpolations (`${...}`) are typed by omegaconf once resolved."""
    if isinstance(value, str) and "${" in value:
        return
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional or inner is Any:
            return
        raise ConfigError(f"{path}: may not be null ({where})")
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: is a section; expected a mapping of its keys, got "
                              f"{value!r} ({where})")
        fields = _fields(inner)
        for key, sub in value.items():
            sub_path = f"{path}.{key}"
            if key not in fields:
                raise _unknown(sub_path, where)
            _check_value(sub, fields[key], sub_path, where)
        return
    if inner is Any:
        return
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list),
        dict: lambda v: isinstance(v, dict),
    }.get(inner)
    if ok is not None and not ok(value):
        raise ConfigError(f"{path}: expected {_TYPE_NAMES[inner]}, got {value!r} "
                          f"({type(value).__name__}) ({where})")


def check_source(data: dict, where: str) -> None:
    """Every key of a source (file or override) is in the schema, with the right type."""
    fields = _fields(PirlConfig)
    for key, value in data.items():
        if key not in fields:
            raise _unknown(str(key), where)
        _check_value(value, fields[key], str(key), where)


# ------------------------------------------------------------------ legacy alias

def split_legacy(data: dict, where: str) -> tuple[dict, dict]:
    """Remove an old `trainer.logger.wandb` block from `data`; returns (data, block)."""
    if "trainer" not in data:
        return data, {}
    data = dict(data)
    trainer = data.pop("trainer")
    node: Any = trainer
    for i, key in enumerate(LEGACY_WANDB[1:], start=1):
        path = ".".join(LEGACY_WANDB[:i])
        if not isinstance(node, dict) or set(node) != {key}:
            extra = sorted(set(node) - {key}) if isinstance(node, dict) else [node]
            raise ConfigError(
                f"unknown key {path}.{extra[0] if extra else key}: pirl has no `trainer` "
                f"section; only the old trainer.logger.wandb block is read, as an alias of "
                f"runner.logger ({where})")
        node = node[key]
    if not isinstance(node, dict):
        raise ConfigError(f"trainer.logger.wandb: expected a mapping, got {node!r} ({where})")
    for key, value in node.items():
        if key not in LEGACY_WANDB_KEYS:
            raise ConfigError(
                f"unknown key trainer.logger.wandb.{key}; the old block knows "
                f"{', '.join(LEGACY_WANDB_KEYS)} (use runner.logger for the rest) ({where})")
        expect = bool if key == "enable" else str
        _check_value(value, expect, f"trainer.logger.wandb.{key}", where)
    return data, dict(node)


def apply_legacy(cfg: DictConfig, block: dict, where: str) -> None:
    """Map an old trainer.logger.wandb block onto runner.logger, in place."""
    if not block:
        return
    warnings.warn(
        f"trainer.logger.wandb ({where}) is the old spelling: write runner.logger."
        f"logger_backends (add 'wandb'), runner.logger.project_name and "
        f"runner.logger.experiment_name", FutureWarning, stacklevel=3)
    log = cfg.runner.logger
    for key in ("project_name", "experiment_name"):
        if key in block:
            log[key] = block[key]
    if "enable" in block:
        backends = [b for b in log.logger_backends if b != "wandb"]
        log.logger_backends = backends + (["wandb"] if block["enable"] else [])


# ------------------------------------------------------------------ overrides

@dataclasses.dataclass(frozen=True)
class Override:
    """One `key=value` from the command line."""

    text: str
    keys: tuple[str, ...]  # dotted key split: ("actor", "optim", "lr")
    value: Any

    @property
    def key(self) -> str:
        return ".".join(self.keys)


def parse_override(text: str) -> Override:
    if text.startswith(("+", "~")):
        raise ConfigError(
            f"override {text!r}: '{text[0]}key' is not supported; every key is in the schema "
            f"(pirl/config/schema.py): write key=value")
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. actor.optim.lr=1e-6)")
    keys = tuple(k.strip() for k in key.split("."))
    if any(not k for k in keys):
        raise ConfigError(f"override {text!r}: empty component in the key {key!r}")
    try:
        parsed = parse_yaml_value(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from None
    return Override(text=text, keys=keys, value=parsed)


def _nest(keys: Sequence[str], value: Any) -> dict:
    for k in reversed(keys):
        value = {k: value}
    return value


# ------------------------------------------------------------------ composition

def find_config_dir(config_path: str | Path | None) -> Path:
    if config_path is None:
        return DEFAULT_CONFIG_DIR
    p = Path(config_path).expanduser()
    for c in ([p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]):
        if c.is_dir():
            return c.resolve()
    raise ConfigError(f"--config-path: {config_path!r} is not a directory")


def _options(directory: Path) -> str:
    names = sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []
    return ", ".join(names) if names else "none"


def _config_file(config_dir: Path, name: str, what: str) -> Path:
    name = name[:-5] if name.endswith(".yaml") else name
    path = (config_dir / f"{name}.yaml").resolve()
    if config_dir.resolve() not in path.parents:
        raise ConfigError(f"{what}: {name!r} points outside {display(config_dir)}")
    if not path.is_file():
        raise ConfigError(f"{what}: {display(path)} not found; options in "
                          f"{display(path.parent)}: {_options(path.parent)}")
    return path


def _compose_file(path: Path, config_dir: Path, choices: dict[str, Any],
                  used: set[str], stack: tuple[Path, ...]) -> list[tuple[str, dict]]:
    """(label, mapping) sources of one file, its defaults expanded, in merge order."""
    if path in stack:
        chain = " -> ".join(display(p) for p in stack + (path,))
        raise ConfigError(f"defaults: cycle {chain}")
    data = load_yaml(path)
    defaults = data.pop(DEFAULTS_KEY, [])
    where = display(path)
    if not isinstance(defaults, list):
        raise ConfigError(f"{where}: defaults must be a list, got {defaults!r}")
    entries = list(defaults) if SELF in defaults else list(defaults) + [SELF]
    out: list[tuple[str, dict]] = []
    for entry in entries:
        if entry == SELF:
            out.append((where, data))
        elif isinstance(entry, str):
            sub = _config_file(config_dir, entry, f"{where}: defaults")
            out += _compose_file(sub, config_dir, choices, used, stack + (path,))
        elif isinstance(entry, dict) and len(entry) == 1:
            group, option = next(iter(entry.items()))
            if group in choices:
                option = choices[group]
                used.add(group)
            if option is None:  # `model: null` drops the group
                continue
            if not isinstance(option, str):
                raise ConfigError(f"{where}: defaults entry {entry!r}: the option must be a "
                                  f"file name in {display(config_dir / str(group))}")
            sub = _config_file(config_dir / str(group), option, f"{where}: defaults {group}")
            out += _compose_file(sub, config_dir, choices, used, stack + (path,))
        else:
            raise ConfigError(f"{where}: defaults entry {entry!r}: expected 'group: option', "
                              f"a config name, or {SELF}")
    return out


def compose(config_name: str, config_path: str | Path | None = None,
            overrides: Sequence[str] = ()) -> DictConfig:
    """Defaults, files and overrides merged into the typed schema; interpolations NOT yet
    resolved."""
    config_dir = find_config_dir(config_path)
    parsed = [parse_override(o) for o in overrides]
    # `model=pi0_tiny`: a group choice when the key names a group folder and the value
    # is a name (a mapping value is an ordinary section override).
    choices = {o.keys[0]: o.value for o in parsed
               if len(o.keys) == 1 and (config_dir / o.keys[0]).is_dir()
               and (o.value is None or isinstance(o.value, str))}
    key_overrides = [o for o in parsed if not (len(o.keys) == 1 and o.keys[0] in choices)]
    used: set[str] = set()
    top = _config_file(config_dir, config_name, "--config-name")
    sources = _compose_file(top, config_dir, choices, used, ())
    unused = sorted(choices.keys() - used)
    if unused:
        group = unused[0]
        raise ConfigError(f"override {group}={choices[group]}: no defaults entry of group "
                          f"{group!r} in {display(top)} to replace")

    cfg = OmegaConf.structured(PirlConfig)
    for where, data in sources:
        data, legacy = split_legacy(data, where)
        check_source(data, where)
        _merge(cfg, data, where, whole=True)
        apply_legacy(cfg, legacy, where)
    for o in key_overrides:
        where = f"override {o.text!r}"
        data, legacy = split_legacy(_nest(o.keys, o.value), where)
        check_source(data, where)
        _merge(cfg, data, where, whole=o.key in REPLACED_ON_MERGE)
        apply_legacy(cfg, legacy, where)
    return cfg


def _merge(cfg: DictConfig, data: dict, where: str, whole: bool) -> None:
    """Merge `data` into `cfg` in place; REPLACED_ON_MERGE nodes are replaced when the
    source gives them whole."""
    data = copy.deepcopy(data)  # REPLACED_ON_MERGE nodes are popped below
    for key in REPLACED_ON_MERGE:
        parent_keys, last = key.split(".")[:-1], key.split(".")[-1]
        parent = data
        for k in parent_keys:
            parent = parent.get(k) if isinstance(parent, dict) else None
        if whole and isinstance(parent, dict) and isinstance(parent.get(last), dict):
            _wrap(lambda: OmegaConf.update(cfg, key, parent.pop(last), merge=False), where)  # noqa: B023 (runs at once)
    _wrap(lambda: cfg.merge_with(data), where)


def _wrap(fn, where: str) -> Any:
    try:
        return fn()
    except OmegaConfBaseException as e:
        raise _from_omegaconf(e, where) from None


def _from_omegaconf(e: OmegaConfBaseException, where: str) -> ConfigError:
    msg = str(getattr(e, "msg", None) or e).splitlines()[0]
    key = getattr(e, "full_key", None) or "config"
    return ConfigError(f"{key}: {msg} ({where})")


def resolve(cfg: DictConfig) -> None:
    """Resolve `${...}` in place; typed keys are converted and checked by omegaconf."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key, err = _first_unresolvable(cfg, "")
        if key is None:  # not found by the walk: report what omegaconf said
            raise _from_omegaconf(e, "while resolving ${...}") from None
        msg = str(getattr(err, "msg", None) or err).splitlines()[0]
        raise ConfigError(f"{key}: {msg}") from None


def _first_unresolvable(node, prefix: str) -> tuple[str | None, Exception | None]:
    """(dotted key, error) of the first value whose interpolation fails (omegaconf's
    key-not-found error does not say which key held the `${...}`)."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for k in keys:
        path = f"{prefix}{k}" if isinstance(node, DictConfig) else f"{prefix[:-1]}[{k}]"
        try:
            value = node[k]
        except OmegaConfBaseException as e:
            return path, e
        if OmegaConf.is_config(value):
            found = _first_unresolvable(value, path + ".")
            if found[0] is not None:
                return found
    return None, None


def load_config(config_name: str, config_path: str | None = None,
                overrides: Sequence[str] = (), world_size: int | None = None) -> DictConfig:
    """Compose, merge into the schema, resolve, validate for `world_size` ranks (default:
    cluster.num_nodes x cluster.num_gpus_per_node). Paths the run opens (model_path,
    resume_dir, ds_config) come back absolute. Raises ConfigError naming the key."""
    cfg = compose(config_name, config_path, overrides)
    resolve(cfg)
    if world_size is None:
        world_size = world_size_of(cfg)
    elif isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"--world-size: {world_size!r} is not a positive integer")
    validate(cfg, world_size)
    for key, path in check_paths(cfg).items():
        OmegaConf.update(cfg, key, str(path), merge=False)
    return cfg


# ------------------------------------------------------------------ command line

def build_arg_parser(prog: str = "pirl") -> argparse.ArgumentParser:
    """The config part of the command line: --config-path, --config-name, --world-size,
    --dry-run and key=value overrides (train.py may extend it)."""
    ap = argparse.ArgumentParser(prog=prog, description="pirl experiment config")
    ap.add_argument("--config-path", default=None,
                    help=f"directory of configs (default {display(DEFAULT_CONFIG_DIR)})")
    ap.add_argument("--config-name", required=True, help="experiment name, e.g. reach2d_ppo_flow_sde")
    ap.add_argument("--world-size", type=int, default=None,
                    help="ranks to validate for (default: cluster.num_nodes x "
                         "cluster.num_gpus_per_node)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the resolved config and the derived sizes, then exit")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (YAML values)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pirl.config.compose --config-name NAME [--world-size N] [key=value ...]`:
    validate and print the dry-run report (exit 2 with the error on a bad config)."""
    args = build_arg_parser("python -m pirl.config.compose").parse_args(argv)
    try:
        cfg = load_config(args.config_name, args.config_path, args.overrides, args.world_size)
        ws = args.world_size if args.world_size is not None else world_size_of(cfg)
        print(format_dry_run(cfg, derived_sizes(cfg, ws)))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
