"""The CALVIN protocol pirl writes itself (pirl.envs.calvin_sequences, calvin_metrics):
task rules, start states, the 1000 chains and start-state simulator states against a fixture
made by CALVIN's own evaluation code with the real pyhash (tests/fixtures/calvin/
make_reference.py), the generator's determinism, and the chain metrics against hand-worked
examples. With $CALVIN_ROOT set, also against the checkout's own evaluation code."""
from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from pirl.envs import calvin_sequences as cs
from pirl.envs.calvin_metrics import chain_metrics, mean_interval
from pirl.eval import wilson_interval

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "calvin" / "protocol_reference.json").read_text())
CALVIN_ROOT = os.environ.get("CALVIN_ROOT")
needs_checkout = pytest.mark.skipif(not CALVIN_ROOT, reason="set CALVIN_ROOT to a mees/calvin checkout "
                                                            "(with calvin_env) to compare with its own code")


def state(**kw) -> dict:
    base = dict(led=0, lightbulb=0, slider="right", drawer="closed", red_block="table", blue_block="table",
                pink_block="slider_left", grasped=0)
    base.update(kw)
    return base


# ------------------------------------------------------------------ rules and start states

def test_task_table():
    assert len(cs.TASK_NAMES) == 34 and set(cs.TASK_NAMES) == set(cs.TASK_CATEGORIES)
    # the protocol draws chains by index into this order
    assert cs.TASK_NAMES[:2] == ("rotate_red_block_right", "rotate_red_block_left")
    assert cs.TASK_NAMES[12:16] == ("move_slider_left", "move_slider_right", "open_drawer", "close_drawer")
    assert cs.TASK_NAMES[25:] == ("place_in_slider", "place_in_drawer", "stack_block", "unstack_block",
                                  "turn_on_lightbulb", "turn_off_lightbulb", "turn_on_led", "turn_off_led",
                                  "push_into_drawer")
    assert sorted(set(cs.TASK_CATEGORIES.values())) == list(range(1, 12))


def test_rules_worked_by_hand():
    s = state()
    assert cs.next_states(s, "move_slider_left") == [{**s, "slider": "left"}]
    assert cs.next_states(s, "move_slider_right") == []  # already right
    assert cs.next_states(s, "lift_red_block_table") == [{**s, "red_block": "grasped", "grasped": 1}]
    # pink is in the left half; reachable while the door covers the right half
    assert cs.next_states(s, "lift_pink_block_slider") == [{**s, "pink_block": "grasped", "grasped": 1}]
    assert cs.next_states({**s, "slider": "left"}, "lift_pink_block_slider") == []
    held = {**s, "red_block": "grasped", "grasped": 1}
    assert cs.next_states(held, "place_in_slider") == [{**held, "red_block": "slider_right", "grasped": 0}]
    assert cs.next_states(held, "place_in_drawer") == []  # drawer closed
    assert cs.next_states(held, "stack_block") == [
        {**held, "red_block": "stacked_top", "blue_block": "stacked_bottom", "grasped": 0}]
    assert cs.next_states(held, "turn_on_led") == []  # hands full
    # push_into_drawer: the one block on the table, the other two in the slider
    two_in_slider = state(drawer="open", red_block="table", blue_block="slider_right", pink_block="slider_left")
    assert cs.next_states(two_in_slider, "push_into_drawer") == [{**two_in_slider, "red_block": "drawer"}]
    assert cs.next_states(state(drawer="open"), "push_into_drawer") == []


def test_chain_validity_worked_by_hand():
    s = state()
    assert cs.is_valid_chain(s, ["open_drawer", "lift_red_block_table", "place_in_drawer", "turn_on_led",
                                 "move_slider_left"])
    # lift_red then lift_blue: the hand is full
    assert not cs.is_valid_chain(s, ["lift_red_block_table", "lift_blue_block_table"])
    # open then close the drawer repeats category 3
    assert not cs.is_valid_chain(s, ["open_drawer", "close_drawer", "turn_on_led", "move_slider_left",
                                     "rotate_red_block_left"])
    # red held, one other block on the table: stack_block has one rule; with both others on
    # the table (never a start state) two rules hold and the task is ambiguous
    both = state(pink_block="table", blue_block="slider_left")
    assert len(cs.next_states({**both, "red_block": "grasped", "grasped": 1}, "stack_block")) == 1
    three = state(pink_block="table")  # never a start state: three blocks on the table
    assert len(cs.next_states({**three, "red_block": "grasped", "grasped": 1}, "stack_block")) == 2
    assert not cs.is_valid_chain({**three, "red_block": "grasped", "grasped": 1}, ["stack_block"])


def test_start_states():
    states = cs.initial_states()
    assert len(states) == REFERENCE["num_states"] == 192
    assert states[0] == dict(led=0, lightbulb=0, slider="right", drawer="closed", red_block="table",
                             blue_block="table", pink_block="slider_right", grasped=0)
    for s in states:
        places = [s[f"{c}_block"] for c in cs.BLOCKS]
        assert places.count("table") in (1, 2) and s["grasped"] == 0
        assert places.count("slider_left") <= 1 and places.count("slider_right") <= 1
    assert len({tuple(s.values()) for s in states}) == 192
    assert cs.chains_per_state(1000) == [6] * 40 + [5] * 152


# ---------------------------------------------------------------------- the 1000 chains

def test_shipped_chains_equal_the_official_generator():
    rows = [[list(s.values()), list(chain)] for s, chain in cs.get_sequences(1000)]
    assert rows[:5] == REFERENCE["first_sequences"] and rows[-1] == REFERENCE["last_sequence"]
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest() == REFERENCE["sequences_sha256"]


def test_every_chain_is_valid_with_distinct_categories():
    seqs = cs.get_sequences(1000)
    assert len(seqs) == 1000
    starts = {tuple(s.values()) for s in cs.initial_states()}
    for s, chain in seqs:
        assert tuple(s.values()) in starts and len(chain) == 5
        assert len({cs.TASK_CATEGORIES[t] for t in chain}) == 5
        assert cs.is_valid_chain(s, chain)
    # each start state has its share of chains, and no state repeats a chain
    by_state: dict = {}
    for s, chain in seqs:
        by_state.setdefault(tuple(s.values()), []).append(chain)
    assert sorted(len(v) for v in by_state.values()) == [5] * 152 + [6] * 40
    assert all(len(set(v)) == len(v) for v in by_state.values())


@pytest.mark.parametrize("index", [0, 100])
def test_generator_reproduces_the_shipped_chains_of_a_state(index):
    """Regenerates one start state's chains (the expensive part) and places them through
    the shuffle: they must be where the shipped file has them."""
    n = 1000
    counts = cs.chains_per_state(n)
    first = sum(counts[:index])  # position of this state's first chain before the shuffle
    chains = cs._chains_for_state(cs.initial_states()[index], counts[index], seed=index)
    assert chains == cs._chains_for_state(cs.initial_states()[index], counts[index], seed=index)  # deterministic
    assert chains != cs._chains_for_state(cs.initial_states()[index], counts[index], seed=index + 1)
    order = cs.shuffle_order(n)
    shipped = cs.get_sequences(n)
    for p, k in enumerate(order):
        if first <= k < first + counts[index]:
            assert shipped[p] == (cs.initial_states()[index], chains[k - first])


def test_generate_small_and_shuffle_order():
    seqs = cs.generate_sequences(3)  # 3 chains: states 0, 1, 2 get one each
    assert [s for s, _ in seqs] == [cs.initial_states()[k] for k in cs.shuffle_order(3)]
    assert sorted(cs.shuffle_order(1000)) == list(range(1000))
    with pytest.raises(ValueError, match="num_sequences must be >= 1"):
        cs.generate_sequences(0)


# ------------------------------------------------------------------ simulator start states

def test_fnv1_32_vectors():
    # FNV-1 test vectors of its authors (basis 0x811c9dc5) and pyhash.fnv1_32() values,
    # measured with pyhash 0.9.3: basis 0 over the UTF-16-LE bytes of a str
    assert cs.fnv1_32(b"a", 0x811C9DC5) == 0x050C5D7E
    assert cs.fnv1_32(b"foobar", 0x811C9DC5) == 0x31F0B262
    assert cs.fnv1_32("abc".encode("utf-16-le")) == 2203671488
    assert cs.fnv1_32("dict_values([0])".encode("utf-16-le")) == 3562692390


def test_start_scene_obs_equal_the_official_code():
    states = cs.initial_states()
    assert [cs.state_hash(s) for s in states] == REFERENCE["state_hashes"]
    pairs = [cs.scene_obs_for(s) for s in states]
    scene = np.stack([p[1] for p in pairs]).astype("<f8")
    for i, values in REFERENCE["scene_obs_examples"].items():
        np.testing.assert_array_equal(scene[int(i)], values)
    assert hashlib.sha256(scene.tobytes()).hexdigest() == REFERENCE["scene_obs_sha256"]
    np.testing.assert_array_equal(pairs[0][0], REFERENCE["robot_obs"])
    # worked by hand for state 0: slider right, drawer closed, lights off, pink in the right half
    s0 = scene[0]
    assert s0[:6].tolist() == [0, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(s0[18:21], cs.BLOCK_POSITIONS["slider_right"])
    assert {tuple(s0[6:9]), tuple(s0[12:15])} == {tuple(p) for p in cs.TABLE_POSITIONS}
    assert all(cs.BLOCK_YAW_RANGE[0] <= s0[k] <= cs.BLOCK_YAW_RANGE[1] for k in (11, 17, 23))


# ----------------------------------------------------------------------------- metrics

def test_chain_metrics_worked_by_hand():
    chains = [("a", "b", "c", "d", "e")] * 5
    r = chain_metrics([0, 1, 2, 5, 5], chains)
    assert r.success == [4 / 5, 3 / 5, 2 / 5, 2 / 5, 2 / 5]
    assert r.avg_len == pytest.approx(13 / 5) == pytest.approx(sum(r.success))
    # a: tried 5x (failed once), b: tried 4x (failed once), c: 3x (once), d and e: 2x
    assert r.task_success == {"a": (4, 5), "b": (3, 4), "c": (2, 3), "d": (2, 2), "e": (2, 2)}
    m = r.metrics()
    assert m["calvin/success_len_1"] == 0.8 and m["calvin/avg_len"] == pytest.approx(2.6)
    # sample std of [0, 1, 2, 5, 5]: sqrt(((2.6)^2 + 1.6^2 + 0.6^2 + 2 * 2.4^2) / 4) = sqrt(5.3)
    half = 1.959963984540054 * np.sqrt(5.3) / np.sqrt(5)
    assert r.avg_len_interval == pytest.approx((2.6 - half, 2.6 + half))
    assert "| 5 | 2.600 [" in r.table() and "Len-5" in r.table()


def test_wilson_interval_worked_by_hand():
    # 50 of 100 at 95%: centre 0.5, half-width 1.96 sqrt(0.0025 + 1.96^2/40000) / (1 + 1.96^2/100)
    assert wilson_interval(50, 100) == pytest.approx((0.40383, 0.59617), abs=1e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert all(np.isnan(mean_interval(np.array([3.0]))))  # no sample std from one chain


def test_chain_metrics_errors():
    with pytest.raises(ValueError, match=r"chain lengths must be in \[0, 5\]"):
        chain_metrics([6])
    with pytest.raises(ValueError, match="non-empty"):
        chain_metrics([])
    with pytest.raises(ValueError, match="2 chains for 1 lengths"):
        chain_metrics([1], [("a",) * 5] * 2)


# ------------------------------------------------- against the checkout's own evaluation code

@contextlib.contextmanager
def _temp_seed(seed):  # calvin_agent.evaluation.utils.temp_seed, the one helper it imports
    st = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(st)


def _official_module():
    """multistep_sequences.py of the checkout, run with a stub for its one calvin_agent import."""
    evaluation = Path(CALVIN_ROOT) / "calvin_models" / "calvin_agent" / "evaluation"
    utils = types.ModuleType("calvin_agent.evaluation.utils")
    utils.temp_seed = _temp_seed
    stubs = {"calvin_agent": types.ModuleType("calvin_agent"),
             "calvin_agent.evaluation": types.ModuleType("calvin_agent.evaluation"),
             "calvin_agent.evaluation.utils": utils}
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        mod = types.ModuleType("official_multistep_sequences")
        exec(compile((evaluation / "multistep_sequences.py").read_text(), "multistep_sequences.py", "exec"),
             mod.__dict__)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    tree = ast.parse((evaluation / "utils.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_env_state_for_initial_condition")
    ns = {"np": np, "pi": np.pi, "temp_seed": _temp_seed,
          "hasher": lambda text: cs.fnv1_32(text.encode("utf-16-le"))}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "utils.py", "exec"), ns)
    return mod, ns["get_env_state_for_initial_condition"]


@pytest.mark.sim
@needs_checkout
def test_against_the_checkouts_evaluation_code():
    official, start_state = _official_module()
    assert tuple(official.tasks) == cs.TASK_NAMES and official.task_categories == cs.TASK_CATEGORIES
    for name, rules in official.tasks.items():
        assert [(r["condition"], r["effect"]) for r in rules] == cs.TASK_RULES[name]
    for s in cs.initial_states():
        robot, scene = start_state(s)
        ours = cs.scene_obs_for(s)
        np.testing.assert_array_equal(robot, ours[0])
        np.testing.assert_array_equal(scene, ours[1])
    for index in (0, 191):  # the official per-state draw (its worker function) for two states
        s = cs.initial_states()[index]
        theirs = official.get_sequences_for_state2((s, 5, index))
        assert [tuple(c) for c in theirs] == cs._chains_for_state(s, 5, seed=index)
