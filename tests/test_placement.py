"""cluster.component_placement: the rank-set parser and the Placement it builds."""
import random

import pytest

from pirl.engine.placement import (
    COMPONENTS,
    Placement,
    PlacementError,
    format_ranks,
    parse_ranks,
)


@pytest.mark.parametrize(
    "spec, world, expected",
    [
        ("all", 4, [0, 1, 2, 3]),
        ("0-3", 8, [0, 1, 2, 3]),
        ("4-7", 8, [4, 5, 6, 7]),
        ("0,2,4", 8, [0, 2, 4]),
        ("0-1,6-7", 8, [0, 1, 6, 7]),
        (" 6-7 , 0-1 ", 8, [0, 1, 6, 7]),  # order and spaces do not matter; result sorted
        ("3", 4, [3]),
        (3, 4, [3]),  # YAML reads `actor: 3` as an int
        ("8-15", 16, list(range(8, 16))),
        ("5-5", 6, [5]),
    ],
)
def test_parse_ranks(spec, world, expected):
    assert parse_ranks(spec, world) == expected


@pytest.mark.parametrize(
    "spec, world, fragment",
    [
        ("3-1", 8, "reversed"),
        ("0-3,2", 8, "rank 2 is listed twice"),
        ("0-8", 8, "rank 8 is beyond the world size 8"),
        ("0-7", 4, "beyond the world size 4"),
        ("8", 8, "beyond"),
        ("0-", 8, "cannot read '0-'"),
        ("-1", 8, "cannot read '-1'"),
        ("a-b", 8, "cannot read"),
        ("", 8, "cannot read"),
        ("0,,1", 8, "cannot read ''"),
        ("0..3", 8, "cannot read"),
        ("ALL", 8, "cannot read"),
        (True, 8, "expected a string"),
        (None, 8, "expected a string"),
        ([0, 1], 8, "expected a string"),
    ],
)
def test_parse_ranks_errors(spec, world, fragment):
    with pytest.raises(PlacementError) as e:
        parse_ranks(spec, world)
    assert fragment in str(e.value)


def test_parse_ranks_rejects_empty_world():
    with pytest.raises(PlacementError, match="world size must be >= 1"):
        parse_ranks("all", 0)


def test_format_ranks_inverts_parse_on_random_sets():
    rng = random.Random(7)
    for _ in range(200):
        world = rng.randint(1, 40)
        ranks = sorted(rng.sample(range(world), rng.randint(1, world)))
        text = format_ranks(ranks)
        assert parse_ranks(text, world) == ranks
        # compact: one item per maximal run of consecutive ranks
        runs = 1 + sum(1 for a, b in zip(ranks, ranks[1:]) if b != a + 1)
        assert len(text.split(",")) == runs


def test_colocated_all():
    p = Placement.from_config({"env,rollout,actor": "all"}, 4)
    for c in COMPONENTS:
        assert p.ranks(c) == [0, 1, 2, 3]
    assert p.is_colocated
    assert p.components_of(2) == {"env", "rollout", "actor"}
    assert p.idle_ranks == []


def test_seed_pipelined_layout_8_gpus():
    p = Placement.from_config({"env": "0-3", "rollout": "4-7", "actor": "0-7"}, 8)
    assert p.ranks("env") == [0, 1, 2, 3]
    assert p.ranks("rollout") == [4, 5, 6, 7]
    assert p.ranks("actor") == list(range(8))
    assert not p.is_colocated
    assert p.components_of(1) == {"env", "actor"}
    assert p.components_of(5) == {"rollout", "actor"}


def test_seed_disjoint_layout_16_gpus():
    p = Placement.from_config({"env": "0-3", "rollout": "4-7", "actor": "8-15"}, 16)
    assert p.components_of(0) == {"env"}
    assert p.components_of(4) == {"rollout"}
    assert p.components_of(15) == {"actor"}
    assert not p.is_colocated


def test_joined_keys_in_any_order_and_int_values():
    p = Placement.from_config({"actor, env": "0-1", "rollout": 1}, 2)
    assert p.ranks("actor") == [0, 1] and p.ranks("env") == [0, 1]
    assert p.ranks("rollout") == [1]
    assert p.components_of(0) == {"actor", "env"}


def test_same_sets_written_separately_are_colocated():
    p = Placement.from_config({"env": "0,1", "rollout": "0-1", "actor": "all"}, 2)
    assert p.is_colocated


def test_idle_ranks_reported():
    p = Placement.from_config({"env": "0", "rollout": "1", "actor": "0-1"}, 4)
    assert p.idle_ranks == [2, 3]


@pytest.mark.parametrize(
    "placement, world, fragment",
    [
        ({"env": "0-3", "rollout": "4-7"}, 8, "no ranks given for actor"),
        ({"env,rollout": "all"}, 2, "no ranks given for actor"),
        ({"env,rollout,actor": "all", "env": "0"}, 2, "env: component 'env' is placed twice"),
        ({"env,rollout,actr": "all"}, 2, "unknown component 'actr'"),
        ({"env,rollout,actr": "all"}, 2, "did you mean 'actor'?"),
        ({"env": "0-3", "rollout": "4-7", "actor": "0-7"}, 4, "rollout: rank set '4-7': rank 4 is beyond"),
        ({"env": "1-0", "rollout": "0", "actor": "0"}, 2, "env: rank set '1-0'"),
        ({}, 2, "expected a mapping"),
        ("all", 2, "expected a mapping"),
    ],
)
def test_placement_errors(placement, world, fragment):
    with pytest.raises(PlacementError) as e:
        Placement.from_config(placement, world)
    assert fragment in str(e.value)


def test_lookup_errors():
    p = Placement.from_config({"env,rollout,actor": "all"}, 2)
    with pytest.raises(KeyError, match="unknown component 'critic'"):
        p.ranks("critic")
    with pytest.raises(ValueError, match="outside the world"):
        p.components_of(2)


# ---- pairing, trajectory routes, refused layouts ---------------------------------------------------
from pirl.config import ConfigError, load_config  # noqa: E402
from pirl.engine.placement import describe_layout, pair_env_rollout, trajectory_routes  # noqa: E402

SEED_LAYOUTS = [  # (placement, world size) of the seeds, and the small CI layouts
    ({"env,rollout,actor": "all"}, 2),
    ({"env": "0-3", "rollout": "4-7", "actor": "0-7"}, 8),
    ({"env": "0-1", "rollout": "2-5", "actor": "6-7"}, 8),
    ({"env": "0-7", "rollout": "8-15", "actor": "0-15"}, 16),
    ({"env": "0-3", "rollout": "4-7", "actor": "8-15"}, 16),
    ({"env": "0", "rollout": "1", "actor": "0-2"}, 3),
    ({"env": "0", "rollout": "1", "actor": "2"}, 3),
]


@pytest.mark.parametrize("spec, world", SEED_LAYOUTS)
def test_pairing_covers_every_env_once(spec, world):
    p = Placement.from_config(spec, world)
    E = 24  # envs per env rank and stage
    links = pair_env_rollout(p, E)
    served = {(lk.env_rank, c) for lk in links for c in range(*lk.env_cols)}
    assert served == {(e, c) for e in p.ranks("env") for c in range(E)}  # each env column exactly once
    assert len(served) == sum(lk.env_cols[1] - lk.env_cols[0] for lk in links)
    for r in p.ranks("rollout"):  # a rollout batch is contiguous rows 0..n-1, without overlap
        rows = sorted(c for lk in links if lk.rollout_rank == r for c in range(*lk.rollout_cols))
        assert rows == list(range(len(rows))) and rows
    sizes = {sum(lk.rollout_cols[1] - lk.rollout_cols[0] for lk in links if lk.rollout_rank == r)
             for r in p.ranks("rollout")}
    assert len(sizes) == 1  # every rollout rank batches the same number of envs


@pytest.mark.parametrize("spec, world", SEED_LAYOUTS)
def test_trajectories_split_evenly_over_actor_ranks(spec, world):
    p = Placement.from_config(spec, world)
    cols = 48  # per rollout rank
    routes = trajectory_routes(p, cols)
    n_actor = len(p.ranks("actor"))
    per_actor = len(p.ranks("rollout")) * cols // n_actor
    got = {a: sorted(c for rt in routes if rt.actor_rank == a for c in range(*rt.dst)) for a in p.ranks("actor")}
    assert all(v == list(range(per_actor)) for v in got.values())
    sent = sorted((rt.rollout_rank, c) for rt in routes for c in range(*rt.src))
    assert sent == sorted((r, c) for r in p.ranks("rollout") for c in range(cols))  # every column once


def test_pairing_splits_an_env_rank_over_its_rollout_ranks():
    p = Placement.from_config({"env": "0-1", "rollout": "2-5", "actor": "6-7"}, 8)
    links = pair_env_rollout(p, 16)
    assert [(lk.env_rank, lk.rollout_rank, lk.env_cols) for lk in links] == [
        (0, 2, (0, 8)), (0, 3, (8, 16)), (1, 4, (0, 8)), (1, 5, (8, 16))]
    p = Placement.from_config({"env": "0-3", "rollout": "4-5", "actor": "0-5"}, 6)
    links = pair_env_rollout(p, 5)
    assert [(lk.env_rank, lk.rollout_rank, lk.rollout_cols) for lk in links] == [
        (0, 4, (0, 5)), (1, 4, (5, 10)), (2, 5, (0, 5)), (3, 5, (5, 10))]


def _layout(placement: str, world: int, *overrides: str):
    return load_config("reach2d_ppo_flow_sde", None, [f"cluster.component_placement={placement}",
                                                      f"cluster.num_gpus_per_node={world}", *overrides], world)


@pytest.mark.parametrize("placement, world, overrides, fragment", [
    ("{env: 0, rollout: 1, actor: 1}", 3, [], "ranks 2 of the world size 3 run no component"),
    ("{env: 0-2, rollout: 3-4, actor: 0-4}", 5, ["env.train.total_num_envs=30", "env.eval.total_num_envs=30"],
     "cluster.component_placement.rollout: 3 env ranks and 2 rollout ranks cannot be paired"),
    ("{'env,rollout,actor': all}", 2, ["rollout.pipeline_stage_num=3"],
     "env.train.total_num_envs: 32 is not a multiple of env ranks (2) x rollout.pipeline_stage_num (3)"),
    ("{env: 0-3, rollout: 4-7, actor: 0-7}", 4, [], "rank 4 is beyond the world size 4"),
    ("{env: 0, rollout: 1, actor: 0-2}", 3, [],
     "32 trajectories per iteration do not split evenly over the 3 actor ranks"),
    ("{env: 0, rollout: 1-3, actor: 0-3}", 4, ["env.train.total_num_envs=24", "env.eval.total_num_envs=24",
                                                "env.train.group_size=12", "actor.global_batch_size=32"],
     "each rollout rank gets 8 envs of a stage, not a multiple of the group size 12"),
])
def test_refused_layouts_name_the_key(placement, world, overrides, fragment):
    with pytest.raises(ConfigError) as e:
        _layout(placement, world, *overrides)
    assert fragment in str(e.value)


def test_dry_run_prints_roles_and_pairing():
    from pirl.config import derived_sizes, format_dry_run

    cfg = _layout("{env: 0-1, rollout: 2-5, actor: 6-7}", 8, "actor.micro_batch_size=4")
    text = format_dry_run(cfg, derived_sizes(cfg, 8))
    assert "rank 0: env" in text and "rank 4: rollout" in text and "rank 7: actor" in text
    assert "env rank 1 envs 8-15 -> rollout rank 5 batch rows 0-7" in text
    assert "envs per env rank: 16 = 1 pipeline stage(s) x 16" in text
    assert "samples per actor rank per iteration: 64" in text
    p = Placement.from_config({"env": "0-1", "rollout": "2-5", "actor": "6-7"}, 8)
    assert describe_layout(p, 16, 2, 64)[-2] == "envs per env rank: 16 = 2 pipeline stage(s) x 8"
