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
