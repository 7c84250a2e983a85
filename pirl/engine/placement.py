"""Which global ranks run which component (`cluster.component_placement`).

The seeds' syntax: each key names one component or several joined by commas, each value
a rank set:

    env,rollout,actor: all            # colocated: every rank does all three
    env: 0-3, rollout: 4-7, actor: 0-7    # env / rollout disjoint (pipelined), actor on all
    env: 0-1, rollout: 2-5, actor: 6-7    # fully disjoint: no offload needed

Rank sets: "all", a rank "3", a range "0-3" (inclusive), or a comma list of those
("0,2,4", "0-1,6-7"). Pure: no torch.distributed here; the engine asks a `Placement`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from collections.abc import Mapping

# Every job runs all three: envs step, the rollout policy samples chunks, the actor trains.
COMPONENTS = ("env", "rollout", "actor")


class PlacementError(ValueError):
    """A malformed or inconsistent `cluster.component_placement`; `key` is the placement
    key at fault ("env", "env,rollout,actor") when there is one."""

    def __init__(self, detail: str, key: str | None = None):
        super().__init__(f"{key}: {detail}" if key else detail)
        self.detail = detail
        self.key = key


def parse_ranks(spec: str | int, world_size: int) -> list[int]:
    """Rank set `spec` ("all", "0-3", "0,2,4", "0-1,6-7", or an int YAML gave us) ->
    sorted ranks, each in [0, world_size). Malformed, reversed, repeated or out-of-world
    ranks are errors."""
    if world_size < 1:
        raise PlacementError(f"world size must be >= 1, got {world_size}")
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise PlacementError(
            f"rank set {spec!r}: expected a string like 'all', '0-3', '0,2,4' or an int")
    text = str(spec).strip()
    if text == "all":
        return list(range(world_size))
    ranks: list[int] = []
    for part in text.split(","):
        ranks.extend(_parse_part(part.strip(), text))
    seen: set[int] = set()
    for r in ranks:
        if r in seen:
            raise PlacementError(f"rank set {text!r}: rank {r} is listed twice")
        seen.add(r)
        if r >= world_size:
            raise PlacementError(
                f"rank set {text!r}: rank {r} is beyond the world size {world_size} "
                f"(ranks 0-{world_size - 1})")
    return sorted(ranks)


def _parse_part(part: str, whole: str) -> list[int]:
    """One comma-separated item: "3" or "0-3" (inclusive)."""
    if part.isdigit():
        return [int(part)]
    lo, sep, hi = part.partition("-")
    lo, hi = lo.strip(), hi.strip()
    if not sep or not lo.isdigit() or not hi.isdigit():
        raise PlacementError(
            f"rank set {whole!r}: cannot read {part!r}; expected 'all', a rank '3', "
            f"a range '0-3' or a comma list like '0-1,6-7'")
    a, b = int(lo), int(hi)
    if a > b:
        raise PlacementError(f"rank set {whole!r}: range {part!r} is reversed (write {b}-{a})")
    return list(range(a, b + 1))


def format_ranks(ranks: list[int] | tuple[int, ...]) -> str:
    """Compact form of a rank set: [0,1,2,3,6] -> "0-3,6" (the inverse of parse_ranks)."""
    out: list[str] = []
    rs = sorted(ranks)
    i = 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        out.append(str(rs[i]) if i == j else f"{rs[i]}-{rs[j]}")
        i = j + 1
    return ",".join(out)


@dataclass(frozen=True)
class Placement:
    """Component -> global ranks, for one world size."""

    world_size: int
    component_ranks: Mapping[str, tuple[int, ...]]  # every name in COMPONENTS, sorted ranks

    @classmethod
    def from_config(cls, placement: Mapping, world_size: int) -> Placement:
        """`placement` is `cluster.component_placement` (keys "env", "env,rollout,actor",
        ...; values rank sets). Errors name the offending key."""
        if not isinstance(placement, Mapping) or not placement:
            raise PlacementError(
                f"expected a mapping component -> ranks (e.g. 'env,rollout,actor: all'), "
                f"got {placement!r}")
        found: dict[str, tuple[int, ...]] = {}
        for key, spec in placement.items():
            names = [n.strip() for n in str(key).split(",")]
            for name in names:
                if name not in COMPONENTS:
                    hint = difflib.get_close_matches(name, COMPONENTS, n=1)
                    did = f"; did you mean {hint[0]!r}?" if hint else ""
                    raise PlacementError(
                        f"unknown component {name!r} (components: "
                        f"{', '.join(COMPONENTS)}){did}", key=str(key))
                if name in found:
                    raise PlacementError(f"component {name!r} is placed twice", key=str(key))
            try:
                ranks = tuple(parse_ranks(spec, world_size))
            except PlacementError as e:
                raise PlacementError(e.detail, key=str(key)) from None
            for name in names:
                found[name] = ranks
        missing = [c for c in COMPONENTS if c not in found]
        if missing:
            raise PlacementError(
                f"no ranks given for {', '.join(missing)}: every job places "
                f"{', '.join(COMPONENTS)} (e.g. 'env,rollout,actor: all')")
        return cls(world_size=world_size, component_ranks={c: found[c] for c in COMPONENTS})

    def ranks(self, component: str) -> list[int]:
        if component not in self.component_ranks:
            raise KeyError(f"unknown component {component!r}; components: {', '.join(COMPONENTS)}")
        return list(self.component_ranks[component])

    def components_of(self, rank: int) -> set[str]:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside the world (size {self.world_size})")
        return {c for c, rs in self.component_ranks.items() if rank in rs}

    @property
    def is_colocated(self) -> bool:
        """env, rollout and actor on the same ranks: components share devices (and offload)."""
        sets = [set(rs) for rs in self.component_ranks.values()]
        return all(s == sets[0] for s in sets)

    @property
    def idle_ranks(self) -> list[int]:
        """Ranks no component uses (a layout written for a smaller world)."""
        used = set().union(*self.component_ranks.values())
        return [r for r in range(self.world_size) if r not in used]
