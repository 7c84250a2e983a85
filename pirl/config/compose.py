"""Composition through hydra-core's compose API, into pirl's typed schema.

Hydra does what it does for the reference system: defaults lists with `group@package`
(`env/libero_spatial@env.train`, `model/pi0@actor.model`), `_self_`, `override`,
`# @package` headers, `${...}` interpolation, `hydra.searchpath`, and the command-line
overrides `key=value`, `+key=value`, `++key=value`, `~key`, `group@package=option`,
`+group@package=option`. Its compose API never changes the working directory, writes
no output folder and configures no logging; `apply_hydra_runtime` does the last two
only when a config asks (pirl/config/README, "Hydra").

pirl's part, around it:
* the search path: the experiment's folder (--config-path, default configs/), its
  `hydra.searchpath` (`${oc.env:EMBODIED_PATH}` defaults to the folder above the
  experiment's, as the reference system's launch script sets it), then pirl's configs/,
  so an experiment written for the reference system finds pirl's groups of the same names;
* `key=value` on a schema key that no file wrote works without a `+` (the schema has it);
* `cluster.component_placement=VALUE` is read as YAML and replaces the placement whole
  (Hydra's override grammar cannot write the joined key `'env,rollout,actor'`, and a merge
  of two placements would place a component twice);
* the reference system's own sections are mapped or refused (pirl/config/reference.py);
* every key is checked against the schema: an unknown key gets the nearest suggestion,
  a mistyped value its expected type, each naming the file (or override) it came from.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import difflib
import os
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Optional
from collections.abc import Callable, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pirl.config import reference
from pirl.config.derived import derived_sizes, format_dry_run, world_size_of
from pirl.config.schema import PirlConfig, precision_of
from pirl.config.validate import REPO_ROOT, ConfigError, as_dict, check_paths, validate

DEFAULT_CONFIG_DIR = REPO_ROOT / "configs"
# Replaced whole by a file or override that gives it; see the module docstring.
REPLACED_WHOLE = ("cluster.component_placement",)
HYDRA_VERSION_BASE = "1.3"


def display(path: Path | str) -> str:
    """A path as the user would type it: relative to the cwd or the repo root when inside."""
    path = Path(path).resolve()
    for root in (Path.cwd(), REPO_ROOT):
        try:
            return str(path.relative_to(root))
        except ValueError:
            continue
    return str(path)


# ------------------------------------------------------------------- schema walk

def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _strip_optional(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return tp, False


def schema_paths(cls=PirlConfig, prefix: str = "") -> dict[str, Any]:
    """Every key of the schema (sections included) -> its annotation."""
    out: dict[str, Any] = {}
    for name, tp in _fields(cls).items():
        path = f"{prefix}{name}"
        out[path] = tp
        inner, _ = _strip_optional(tp)
        if dataclasses.is_dataclass(inner):
            out.update(schema_paths(inner, path + "."))
    return out


_PATHS = schema_paths()


def schema_type(key: str) -> Optional[Any]:
    """The annotation of a schema key; `Any` under an open mapping (init_params, ...);
    None when the key is not in the schema."""
    if key in _PATHS:
        return _PATHS[key]
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        inner, _ = _strip_optional(_PATHS.get(".".join(parts[:i]), None))
        if inner is dict:
            return Any
    return None


def _first_unknown(key: str) -> str:
    """The shortest prefix of `key` the schema does not have (`video_cfg` of `video_cfg.fps`)."""
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
        if schema_type(".".join(parts[:n])) is None:
            return ".".join(parts[:n])
    return key


def _suggest(path: str) -> str:
    """'; did you mean X?' for an unknown dotted key: the same name in another section
    first (a bare `total_num_envs`), then a close sibling, then the closest full key."""
    parent, _, name = path.rpartition(".")
    same = [p for p in _PATHS if p.rpartition(".")[2] == name]
    if same:
        return f"; did you mean {same[0]}?"
    siblings = [p.rpartition(".")[2] for p in _PATHS if p.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {parent + '.' if parent else ''}{close[0]}?"
    close = difflib.get_close_matches(path, list(_PATHS), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


_TYPE_NAMES = {int: "an int", float: "a number", bool: "a bool (True/False)",
               str: "a string", list: "a list", dict: "a mapping"}
_TYPE_OK = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    list: lambda v: isinstance(v, list),
    dict: lambda v: isinstance(v, dict),
}


def check_against_schema(node: Any, tp: Any = PirlConfig, path: str = "") -> Optional[tuple[str, str]]:
    """(key, message) of the first unknown key or mistyped value, else None. Values are
    plain containers with interpolations unresolved (typed once resolved)."""
    if isinstance(node, str) and "${" in node:
        return None
    inner, optional = _strip_optional(tp)
    if node is None:
        if optional or inner is Any:
            return None
        return path, f"{path}: may not be null"
    if dataclasses.is_dataclass(inner):
        if not isinstance(node, dict):
            return path, f"{path}: is a section; expected a mapping of its keys, got {node!r}"
        fields = _fields(inner)
        for key, sub in node.items():
            sub_path = f"{path}.{key}" if path else str(key)
            if key not in fields:
                return sub_path, f"unknown key {sub_path}{_suggest(sub_path)}"
            found = check_against_schema(sub, fields[key], sub_path)
            if found:
                return found
        return None
    ok = _TYPE_OK.get(inner)
    if ok is not None and not ok(node):
        return path, f"{path}: expected {_TYPE_NAMES[inner]}, got {node!r} ({type(node).__name__})"
    return None


# ------------------------------------------------------------------ sources

def has_key(cfg: Any, key: str) -> bool:
    """`key` (dotted) is present in `cfg`, whatever its value (null included)."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, (dict, DictConfig)) or part not in node:
            return False
        node = node._get_node(part) if isinstance(node, DictConfig) else node[part]
    return True


@dataclasses.dataclass
class Source:
    """One file of the composition (mounted at its package) or one override."""

    label: str  # a file path as the user would type it, or "override 'k=v'"
    data: dict  # mounted at the root: {"env": {"train": {...}}}
    key: str = ""  # an override's key; "" for a file

    def sets(self, key: str) -> bool:
        return has_key(self.data, key)


def _mount(data: dict, package: str) -> dict:
    for part in reversed([p for p in package.split(".") if p and p != "_global_"]):
        data = {part: data}
    return data


def _override_tree(key: str, value: Any) -> dict:
    return _mount({key.rsplit(".", 1)[-1]: value}, key.rsplit(".", 1)[0] if "." in key else "")


class Sources:
    """Where each key of a composed config came from, for error messages. The files are
    listed on first use (`files()`: it walks the defaults list again and reads each file)."""

    def __init__(self, files: Callable[[], list[Source]], overrides: list[Source]):
        self._files_fn, self.overrides = files, overrides
        self._files: Optional[list[Source]] = None

    def files(self) -> list[Source]:
        if self._files is None:
            self._files = self._files_fn()
        return self._files

    @property
    def items(self) -> list[Source]:
        return self.files() + self.overrides

    def where(self, key: str) -> str:
        """' (in FILE)' of the last source that sets `key` or a parent of it."""
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            prefix = ".".join(parts[:n])
            for s in reversed(self.items):
                if s.sets(prefix):
                    return f" ({s.label})"
        return ""

    def given(self, key: str) -> bool:
        return any(s.sets(key) for s in self.items)


# ------------------------------------------------------------------ search path

def find_config_dir(config_path: str | Path | None) -> Path:
    if config_path is None:
        return DEFAULT_CONFIG_DIR
    p = Path(config_path).expanduser()
    for c in ([p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]):
        if c.is_dir():
            return c.resolve()
    raise ConfigError(f"--config-path: {config_path!r} is not a directory")


def _experiments(directory: Path) -> str:
    names = sorted(p.stem for p in directory.glob("*.yaml"))
    return ", ".join(names) if names else "none"


def _search_path(config_dir: Path, primary: DictConfig, overrides: list) -> list[str]:
    """The experiment's hydra.searchpath (or its override) with pirl's configs/ last."""
    given = next((o.value() for o in overrides if o.key_or_group == "hydra.searchpath"), None)
    if given is None:
        node = OmegaConf.select(primary, "hydra.searchpath")
        # The reference system's experiments search ${oc.env:EMBODIED_PATH}/config/; its
        # launch script sets EMBODIED_PATH to the folder above the experiments' folder.
        os.environ.setdefault("EMBODIED_PATH", str(config_dir.parent))
        try:
            given = list(node) if node is not None else []
        except OmegaConfBaseException as e:
            raise ConfigError(f"hydra.searchpath: {e} ({display(config_dir)})") from None
    paths = [str(p) for p in given]
    if config_dir != DEFAULT_CONFIG_DIR.resolve():
        paths.append(f"file://{DEFAULT_CONFIG_DIR}")
    return paths


def _file_dirs(config_dir: Path, search_path: list[str]) -> list[Path]:
    dirs = [config_dir]
    for p in search_path:
        if p.startswith("file://"):
            dirs.append(Path(p[len("file://"):]))
    return dirs


def _find_file(dirs: list[Path], config_path: str) -> Optional[Path]:
    for d in dirs:
        f = d / f"{config_path}.yaml"
        if f.is_file():
            return f
    return None


# ------------------------------------------------------------------ overrides

class Overrides(NamedTuple):
    hydra: list[str]  # passed to Hydra
    replaced: list[tuple[str, Any, str]]  # (key, value, text): REPLACED_WHOLE, applied after
    deleted: list[str]  # `~key` of schema keys: what the files set goes, the default stays
    sources: list[Source]  # what each override sets, for error messages


def _group_dirs(dirs: list[Path], name: str) -> bool:
    return any((d / name).is_dir() for d in dirs)


def classify_overrides(texts: Sequence[str], dirs: list[Path]) -> Overrides:
    """Command-line overrides -> those Hydra applies, those pirl applies after it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    hydra_ov: list[str] = []
    replaced: list[tuple[str, Any, str]] = []
    deleted: list[str] = []
    sources: list[Source] = []
    for text in texts:
        key = text.partition("=")[0].strip()
        if key in REPLACED_WHOLE:
            value = _yaml_value(text)
            replaced.append((key, value, text))
            sources.append(Source(f"override {text!r}", _override_tree(key, value), key))
            continue
        try:
            (o,) = parser.parse_overrides([text])
        except OverrideParseException as e:
            raise ConfigError(f"override {text!r}: {str(e).splitlines()[0]} (Hydra's override "
                              f"grammar: key=value, +key=value, ++key=value, ~key, group=option)") from None
        name = o.key_or_group
        if o.package is not None or "/" in name or name.split(".")[0] == "hydra":
            hydra_ov.append(text)  # a defaults-list override, or Hydra's own settings
            continue
        if "." not in name and _group_dirs(dirs, name) and (isinstance(o.value(), str) or o.value() is None):
            hydra_ov.append(text)  # group=option
            continue
        tp = schema_type(name)
        if o.is_delete() and (tp is not None or name.startswith(_REFERENCE_PREFIXES)):
            deleted.append(name)
            continue
        if tp is None and not name.startswith(_REFERENCE_PREFIXES):
            if o.is_delete() or o.is_add() or o.is_force_add():
                hydra_ov.append(text)  # checked against the schema after composition
            else:
                bad = _first_unknown(name)
                raise ConfigError(f"unknown key {bad}{_suggest(bad)} (override {text!r})")
        elif not (o.is_delete() or o.is_add() or o.is_force_add()):
            # A schema key: it exists whether or not a file wrote it.
            hydra_ov.append("++" + text)
        else:
            hydra_ov.append(text)
        if not o.is_delete():
            sources.append(Source(f"override {text!r}", _override_tree(name, o.value()), name))
    return Overrides(hydra_ov, replaced, deleted, sources)


_REFERENCE_PREFIXES = tuple(f"{s}." for s in reference.REFERENCE_SECTIONS) + tuple(
    f"actor.{k}" for k in reference.REFERENCE_ACTOR_KEYS) + tuple(f"actor.optim.{k}" for k in reference.REFERENCE_OPTIM_KEYS)


def _yaml_value(text: str) -> Any:
    value = text.partition("=")[2]
    try:
        return yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from None


# ------------------------------------------------------------------ composition

class Composed(NamedTuple):
    cfg: DictConfig  # typed (PirlConfig), interpolations not yet resolved
    hydra: DictConfig  # Hydra's own node (hydra.*), for apply_hydra_runtime
    sources: Sources  # files and overrides, for error messages
    notices: list[str]  # reference-system keys read in pirl's terms
    primary_hydra: DictConfig  # the experiment file's own `hydra:` section (what it asks for)


def compose(config_name: str, config_path: str | Path | None = None,
            overrides: Sequence[str] = ()) -> Composed:
    """Hydra composition -> reference keys mapped -> schema check -> typed config."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode

    config_dir = find_config_dir(config_path)
    name = config_name[:-5] if config_name.endswith(".yaml") else config_name
    primary_file = config_dir / f"{name}.yaml"
    if not primary_file.is_file():
        raise ConfigError(f"--config-name: {display(primary_file)} not found; experiments in "
                          f"{display(config_dir)}: {_experiments(config_dir)}")
    primary = _load_yaml(primary_file)
    from hydra.core.override_parser.overrides_parser import OverridesParser
    pre = [o for o in OverridesParser.create().parse_overrides(
        [t for t in overrides if t.startswith("hydra.searchpath=")])]
    search_path = _search_path(config_dir, primary, pre)
    dirs = _file_dirs(config_dir, search_path)
    ov = classify_overrides([t for t in overrides if not t.startswith("hydra.searchpath=")], dirs)
    hydra_overrides = ov.hydra + ([_searchpath_override(search_path)] if search_path else [])

    if GlobalHydra.instance().is_initialized():  # a caller's Hydra (e.g. a notebook)
        GlobalHydra.instance().clear()
    with warnings.catch_warnings():
        # Hydra warns about search-path folders that do not exist (the reference's
        # ${EMBODIED_PATH}/config/ in pirl's tree) and about defaults lists without _self_.
        warnings.simplefilter("ignore", UserWarning)
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base=HYDRA_VERSION_BASE,
                                       job_name=name):
                cfg = hydra_compose(name, hydra_overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException, ValueError) as e:  # ValueError: a bad defaults entry
            raise ConfigError(_hydra_message(e, display(primary_file))) from None
        except RecursionError:  # Hydra follows a defaults cycle until the stack ends
            raise ConfigError(f"defaults: cycle {' -> '.join(_defaults_cycle(dirs, name))} "
                              f"(composing {display(primary_file)})") from None

    def files() -> list[Source]:
        """The composition's files in merge order, each mounted at its package."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with initialize_config_dir(config_dir=str(config_dir), version_base=HYDRA_VERSION_BASE,
                                       job_name=name):
                defaults = GlobalHydra.instance().config_loader().compute_defaults_list(
                    name, hydra_overrides, RunMode.RUN).defaults
        out = []
        for d in defaults:
            if d.config_path is None or d.config_path.startswith("hydra/") or d.is_self and not d.primary:
                continue
            path = _find_file(dirs, d.config_path)
            if path is None:
                continue
            data = _load_yaml(path)
            data.pop("defaults", None)
            data.pop("hydra", None)
            out.append(Source(display(path), _mount(as_dict(data), d.package or "")))
        return out

    sources = Sources(files, ov.sources)

    hydra_node = cfg.hydra
    # Untyped: schema defaults, then what was composed (unknown keys kept for the check).
    full = OmegaConf.create(copy.deepcopy(_schema_defaults()))
    raw = OmegaConf.create({k: v for k, v in as_dict(cfg).items() if k != "hydra"})
    missing = _missing_keys(raw)
    if missing:  # a group leaves a value to the experiment (`???`), and nothing gave it
        key = missing[0]
        raise ConfigError(f"{key}: no value (??? in {sources.where(key)[2:-1]}); the experiment or "
                          f"an override must set it ({key}=...)")
    for key in ov.deleted:
        _delete(raw, key)
    for key in REPLACED_WHOLE:
        if _merged_from_several(raw, key, ov):
            _replace_whole(raw, key, sources.files(), ov)
    full.merge_with(raw)
    ref = reference.split_reference(full)
    try:
        notices = reference.map_reference(ref, full, sources.given)
    except reference.ReferenceKeyError as e:
        raise ConfigError(f"{e}{sources.where(e.key)}") from None
    found = check_against_schema(OmegaConf.to_container(full, resolve=False))
    if found:
        key, msg = found
        raise ConfigError(f"{msg}{sources.where(key)}")
    typed = OmegaConf.structured(PirlConfig)
    try:
        typed.merge_with(full)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raise ConfigError(f"{key}: {str(getattr(e, 'msg', None) or e).splitlines()[0]}"
                          f"{sources.where(key)}") from None
    primary_hydra = primary.get("hydra") if isinstance(primary.get("hydra"), DictConfig) else OmegaConf.create()
    return Composed(typed, hydra_node, sources, notices, primary_hydra)


def _defaults_cycle(dirs: list[Path], name: str) -> list[str]:
    """The chain of plain config names that includes `name` again (for the message)."""
    def entries(config: str) -> list[str]:
        f = _find_file(dirs, config)
        data = as_dict(OmegaConf.load(f)) if f else {}
        return [e for e in data.get("defaults", []) if isinstance(e, str) and e != "_self_"]

    def walk(chain: list[str]) -> Optional[list[str]]:
        for nxt in entries(chain[-1]):
            if nxt in chain:
                return chain + [nxt]
            found = walk(chain + [nxt])
            if found:
                return found
        return None

    return walk([name]) or [name, "...", name]


@functools.lru_cache(maxsize=1)
def _schema_defaults() -> dict:
    return as_dict(OmegaConf.structured(PirlConfig))


def _merged_from_several(raw: Any, key: str, ov: Overrides) -> bool:
    """Hydra merged placements of several files (a component placed twice shows it), or an
    override gives one: then `_replace_whole` rebuilds it from the sources."""
    if any(s.key == key or s.key.startswith(key + ".") for s in ov.sources):
        return True
    node = OmegaConf.select(raw, key)
    names = [c.strip() for k in (node or {}) for c in str(k).split(",")]
    return len(names) != len(set(names))


def _replace_whole(raw: Any, key: str, files: list[Source], ov: Overrides) -> None:
    """`key` as the last file that gives it wrote it (Hydra merged every file's), then the
    overrides in order: one of `key` itself replaces, one of a sub-key merges."""
    value: Any = None
    for f in files:
        if f.sets(key):
            value = OmegaConf.create(OmegaConf.select(OmegaConf.create(f.data), key))
    for s in ov.sources:
        if s.key == key:
            value = OmegaConf.create(OmegaConf.select(OmegaConf.create(s.data), key))
        elif s.key.startswith(key + "."):
            value = OmegaConf.merge(value or {}, OmegaConf.select(OmegaConf.create(s.data), key))
    if value is not None:
        OmegaConf.update(raw, key, value, merge=False, force_add=True)


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys whose value is `???`, without resolving anything (OmegaConf.missing_keys
    resolves interpolations, which may fail before the schema check names them)."""
    out: list[str] = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            child = node._get_node(k)
            if child is not None and child._is_missing():
                out.append(f"{prefix}{k!s}")
            elif isinstance(child, DictConfig):
                out += _missing_keys(child, f"{prefix}{k!s}.")
    return out


def _delete(cfg: Any, key: str) -> None:
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig) and last in node:
        del node[last]


def _searchpath_override(paths: list[str]) -> str:
    return "hydra.searchpath=[" + ",".join(f"'{p}'" for p in paths) + "]"


def _load_yaml(path: Path) -> DictConfig:
    try:
        data = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise ConfigError(f"{display(path)}: not valid YAML: {e}") from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{display(path)}: expected a mapping of keys at the top, got "
                          f"{type(data).__name__}")
    return data


def _hydra_message(e: Exception, primary: str) -> str:
    """Hydra's error (and the OmegaConf error under it) in one paragraph."""
    text = str(e).split("Config search path:")[0]  # Hydra appends its whole search path
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    inner = e.__cause__ or e.__context__
    if inner is not None and str(inner) and str(inner) not in str(e):
        lines += [line.strip() for line in str(inner).splitlines() if line.strip()]
    return f"{'; '.join(lines)} (composing {primary})"


# ------------------------------------------------------------------ resolve + validate

def resolve(cfg: DictConfig, sources: Optional[Sources] = None) -> None:
    """Resolve `${...}` in place; typed keys are converted and checked by omegaconf."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key, err = _first_unresolvable(cfg, "")
        if key is None:
            raise ConfigError(f"config: {str(getattr(e, 'msg', None) or e).splitlines()[0]} "
                              f"(while resolving ${{...}})") from None
        msg = str(getattr(err, "msg", None) or err).splitlines()[0]
        raise ConfigError(f"{key}: {msg}{sources.where(key) if sources else ''}") from None


def _first_unresolvable(node, prefix: str) -> tuple[str | None, Exception | None]:
    """(dotted key, error) of the first value whose interpolation fails (omegaconf's
    key-not-found error does not say which key held the `${...}`)."""
    keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else range(len(node))
    for k in keys:
        path = f"{prefix}{k}" if isinstance(node, DictConfig) else f"{prefix[:-1]}[{k}]"
        try:
            value = node[k]
        except OmegaConfBaseException as e:
            return path, e
        if isinstance(value, (DictConfig, ListConfig)):
            found = _first_unresolvable(value, path + ".")
            if found[0] is not None:
                return found
    return None, None


def load_job(config_name: str, config_path: str | None = None, overrides: Sequence[str] = (),
             world_size: int | None = None, check_files: bool = True) -> Composed:
    """Compose, resolve, validate for `world_size` ranks (default: cluster.num_nodes x
    cluster.num_gpus_per_node). Paths the run opens (model_path, resume_dir, ds_config)
    come back absolute; `check_files=False` (--dry-run) leaves a checkpoint that is not
    there yet to the run. Notices are issued as `ConfigNotice` warnings. Raises ConfigError
    naming the key and the file."""
    job = compose(config_name, config_path, overrides)
    cfg = job.cfg
    if OmegaConf.select(cfg, "actor.model.precision") is None:
        cfg.actor.model.precision = precision_of(cfg.actor.model)
    resolve(cfg, job.sources)
    restricted = reference.check_restricted(cfg)
    if restricted:
        key, msg = restricted
        raise ConfigError(f"{msg}{job.sources.where(key)}")
    if world_size is None:
        world_size = world_size_of(cfg)
    elif isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"--world-size: {world_size!r} is not a positive integer")
    try:
        validate(cfg, world_size, check_files)
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        raise ConfigError(f"{e}{job.sources.where(key) if ' ' not in key else ''}") from None
    for key, path in check_paths(cfg, check_files).items():
        OmegaConf.update(cfg, key, str(path), merge=False)
    for line in job.notices + reference.reference_notices(cfg):
        reference.notice(line)
    return job


def load_config(config_name: str, config_path: str | None = None, overrides: Sequence[str] = (),
                world_size: int | None = None, check_files: bool = True) -> DictConfig:
    """The validated, resolved config of an experiment (`load_job(...).cfg`)."""
    return load_job(config_name, config_path, overrides, world_size, check_files).cfg


# ------------------------------------------------------------------ Hydra runtime, on request

def apply_hydra_runtime(job: Composed, overrides: Sequence[str], rank: int) -> Optional[Path]:
    """What Hydra's own launcher would do, only where the config asks for it: a job_logging
    other than Hydra's file-writing `default` (the reference's experiments choose `stdout`)
    configures Python logging; a `hydra.output_subdir` given in the experiment or an
    override writes config.yaml / overrides.yaml under `hydra.run.dir` (rank 0). Returns
    that folder, or None."""
    import logging.config

    h = job.hydra
    choice = OmegaConf.select(h, "runtime.choices")
    logging_choice = choice.get("hydra/job_logging") if choice is not None else None
    if logging_choice not in (None, "default"):
        conf = {str(k): v for k, v in as_dict(h.job_logging).items()}
        if conf:
            logging.config.dictConfig(conf)
    asked = "output_subdir" in job.primary_hydra or any(
        o.lstrip("+").startswith("hydra.output_subdir=") for o in overrides)
    if not asked or h.output_subdir is None or rank != 0:
        return None
    folder = Path(str(h.run.dir)) / str(h.output_subdir)
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(job.cfg, folder / "config.yaml", resolve=True)
    (folder / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    return folder


# ------------------------------------------------------------------ command line

def build_arg_parser(prog: str = "pirl") -> argparse.ArgumentParser:
    """The config part of the command line: --config-path, --config-name, --world-size,
    --dry-run and overrides (train.py may extend it)."""
    ap = argparse.ArgumentParser(prog=prog, description="pirl experiment config")
    ap.add_argument("--config-path", default=None,
                    help=f"directory of experiments (default {display(DEFAULT_CONFIG_DIR)})")
    ap.add_argument("--config-name", required=True, help="experiment name, e.g. libero_spatial_ppo_openpi")
    ap.add_argument("--world-size", type=int, default=None,
                    help="ranks to validate for (default: cluster.num_nodes x "
                         "cluster.num_gpus_per_node)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the resolved config and the derived sizes, then exit")
    ap.add_argument("overrides", nargs="*",
                    help="Hydra overrides: key=value, +key=value, ~key, group@package=option")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pirl.config.compose --config-name NAME [--world-size N] [overrides]`:
    validate and print the dry-run report (exit 2 with the error on a bad config); as
    train.py --dry-run, a checkpoint need not exist yet."""
    args = build_arg_parser("python -m pirl.config.compose").parse_args(argv)
    try:
        cfg = load_config(args.config_name, args.config_path, args.overrides, args.world_size,
                          check_files=False)
        ws = args.world_size if args.world_size is not None else world_size_of(cfg)
        print(format_dry_run(cfg, derived_sizes(cfg, ws)))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
