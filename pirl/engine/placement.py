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


# ---- who talks to whom ------------------------------------------------------------------------
@dataclass(frozen=True)
class Link:
    """One env rank's share of a pipeline stage, served by one rollout rank: env columns
    [env_cols) of the env rank's stage batch are columns [rollout_cols) of the rollout
    rank's stage batch (the observations it samples for in one policy call)."""

    env_rank: int
    rollout_rank: int
    env_cols: tuple[int, int]
    rollout_cols: tuple[int, int]


def pair_env_rollout(placement: Placement, envs_per_stage: int) -> list[Link]:
    """Pair env ranks with rollout ranks; one count must divide the other. With k env
    ranks per rollout rank, a rollout rank batches the stage envs of its k env ranks; with
    k rollout ranks per env rank, an env rank splits each stage's envs into k equal parts."""
    env, roll = placement.ranks("env"), placement.ranks("rollout")
    ne, nr = len(env), len(roll)
    if ne % nr and nr % ne:
        raise PlacementError(
            f"{ne} env ranks and {nr} rollout ranks cannot be paired: one count must divide the "
            f"other (each rollout rank serves a whole number of env ranks, or each env rank feeds "
            f"a whole number of rollout ranks)", key="rollout")
    E = envs_per_stage
    links = []
    if ne >= nr:
        k = ne // nr
        for i, e in enumerate(env):
            off = (i % k) * E
            links.append(Link(e, roll[i // k], (0, E), (off, off + E)))
    else:
        k = nr // ne
        if E % k:
            raise PlacementError(
                f"each env rank feeds {k} rollout ranks, but its {E} envs per pipeline stage do not "
                f"split into {k} equal parts", key="rollout")
        part = E // k
        for j, r in enumerate(roll):
            p = j % k
            links.append(Link(env[j // k], r, (p * part, (p + 1) * part), (0, part)))
    return links


@dataclass(frozen=True)
class Route:
    """Trajectory columns [src) of a rollout rank's buffer go to columns [dst) of an actor
    rank's buffer."""

    rollout_rank: int
    actor_rank: int
    src: tuple[int, int]
    dst: tuple[int, int]


def trajectory_routes(placement: Placement, cols_per_rollout_rank: int) -> list[Route]:
    """Split every env column (one env's trajectory in one rollout epoch) evenly over the
    actor ranks, whatever the ratio of rollout to actor ranks: global column order is
    (rollout rank, its own column order); actor rank a takes the a-th contiguous slice."""
    roll, actors = placement.ranks("rollout"), placement.ranks("actor")
    total = len(roll) * cols_per_rollout_rank
    if total % len(actors):
        raise PlacementError(
            f"{total} env trajectories per iteration (envs x rollout epochs) do not split evenly over "
            f"{len(actors)} actor ranks", key="actor")
    per = total // len(actors)
    routes = []
    for j, r in enumerate(roll):
        lo, hi = j * cols_per_rollout_rank, (j + 1) * cols_per_rollout_rank
        for i, a in enumerate(actors):
            alo, ahi = i * per, (i + 1) * per
            s, e = max(lo, alo), min(hi, ahi)
            if s < e:
                routes.append(Route(r, a, (s - lo, e - lo), (s - alo, e - alo)))
    return routes


def describe_layout(placement: Placement, envs_per_env_rank: int, stages: int, samples_per_actor_rank: int) -> list[str]:
    """The dry-run's view of a layout: each rank's roles, the env <-> rollout pairing, envs
    per env rank and stage, samples per actor rank."""
    per_stage = envs_per_env_rank // stages
    lines = ["# ranks"]
    for r in range(placement.world_size):
        lines.append(f"rank {r}: {', '.join(c for c in COMPONENTS if r in placement.component_ranks[c])}")
    lines.append("# env -> rollout pairing (per pipeline stage: env columns -> rollout columns)")
    for link in pair_env_rollout(placement, per_stage):
        lines.append(f"env rank {link.env_rank} envs {link.env_cols[0]}-{link.env_cols[1] - 1} -> rollout rank "
                     f"{link.rollout_rank} batch rows {link.rollout_cols[0]}-{link.rollout_cols[1] - 1}")
    lines.append(f"envs per env rank: {envs_per_env_rank} = {stages} pipeline stage(s) x {per_stage}")
    lines.append(f"samples per actor rank per iteration: {samples_per_actor_rank}")
    return lines
