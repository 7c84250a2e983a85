"""The CALVIN long-horizon protocol: 5-task chains, their start states, written for pirl.

CALVIN's evaluation (calvin_agent.evaluation: multistep_sequences.py and utils.py of
mees/calvin) cannot be imported here: calvin_agent pins torch 1.13 and a hash package that
no longer builds. This module is the same protocol, reproduced exactly:

* A symbolic scene state: led / lightbulb (0 | 1), slider (left | right), drawer (open |
  closed), where each block is (table, slider_left, slider_right, drawer, grasped,
  stacked_top, stacked_bottom) and whether the gripper holds one. Each of the 34 tasks is a
  list of (condition, effect) rules on it (`TASK_RULES`); a task is valid in a state when
  exactly one rule's condition holds.
* 192 start states (`initial_states`): every combination of led, lightbulb, slider, drawer
  and block places (each block on the table, slider_left or slider_right) with one or two
  blocks on the table and at most one block in each slider half; nothing grasped.
* `generate_sequences(1000)`: the 1000 evaluation chains. The 1000 are split over the 192
  states in order (the first 1000 % 192 states get one more); for state i a RandomState(i)
  draws 5 distinct task names until the chain is valid from that state and its 5 task
  categories are distinct; the (state, chain) list is then shuffled by RandomState(0).
  Deterministic, and equal to the official generator's output
  (tests/test_envs_calvin_protocol.py checks it against a fixture made by the official code).
  Valid chains are rare, so this takes ~2 minutes on one core (the official code too);
  `get_sequences(1000)` reads the same list from calvin_sequences_1000.json beside this
  file, written by `python -m pirl.envs.calvin_sequences --write` and compared with a fresh
  generation by `--check`.
* `scene_obs_for(state)`: the simulator state (robot_obs (15,), scene_obs (24,)) the
  official evaluation resets to for a symbolic start state. Its block yaw angles come from
  a RandomState seeded by the FNV-1 hash (32 bit, basis 0, over the UTF-16-LE bytes: what
  pyhash.fnv1_32() computes for a str) of str(state.values()).
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

CHAIN_LENGTH = 5
NUM_SEQUENCES = 1000  # chains of the official evaluation
BLOCKS = ("red", "blue", "pink")

State = dict[str, Any]  # symbolic scene state, keys `STATE_KEYS`
Rule = tuple[dict[str, Any], dict[str, Any]]  # (condition, effect); a list in a condition = any of

STATE_KEYS = ("led", "lightbulb", "slider", "drawer", "red_block", "blue_block", "pink_block", "grasped")
# The values each key of a start state takes, in the order the start states are enumerated.
START_VALUES: dict[str, tuple] = {
    "led": (0, 1),
    "lightbulb": (0, 1),
    "slider": ("right", "left"),
    "drawer": ("closed", "open"),
    "red_block": ("table", "slider_right", "slider_left"),
    "blue_block": ("table", "slider_right", "slider_left"),
    "pink_block": ("table", "slider_right", "slider_left"),
    "grasped": (0,),
}


def _block(color: str) -> str:
    return f"{color}_block"


def _task_rules() -> dict[str, list[Rule]]:
    """The 34 tasks in the protocol's order (the order matters: chains are drawn from this
    list by index) with their rules."""
    rules: dict[str, list[Rule]] = {}
    for verb in ("rotate", "push"):
        for c in BLOCKS:
            for side in ("right", "left"):
                rules[f"{verb}_{c}_block_{side}"] = [({_block(c): "table", "grasped": 0}, {_block(c): "table"})]
    rules["move_slider_left"] = [({"slider": "right", "grasped": 0}, {"slider": "left"})]
    rules["move_slider_right"] = [({"slider": "left", "grasped": 0}, {"slider": "right"})]
    rules["open_drawer"] = [({"drawer": "closed", "grasped": 0}, {"drawer": "open"})]
    rules["close_drawer"] = [({"drawer": "open", "grasped": 0}, {"drawer": "closed"})]
    held: dict[str, Any] = {"grasped": 1}
    for c in BLOCKS:
        b, lifted = _block(c), {_block(c): "grasped", **held}
        rules[f"lift_{c}_block_table"] = [({b: "table", "grasped": 0}, lifted)]
        # A block in one half of the sliding cabinet is reachable when the door covers the other.
        rules[f"lift_{c}_block_slider"] = [
            ({b: "slider_left", "slider": "right", "grasped": 0}, lifted),
            ({b: "slider_right", "slider": "left", "grasped": 0}, lifted),
        ]
        rules[f"lift_{c}_block_drawer"] = [({b: "drawer", "drawer": "open", "grasped": 0}, lifted)]
    rules["place_in_slider"] = [
        ({_block(c): "grasped", "slider": side, "grasped": 1}, {_block(c): f"slider_{side}", "grasped": 0})
        for c in BLOCKS for side in ("right", "left")
    ]
    rules["place_in_drawer"] = [
        ({_block(c): "grasped", "drawer": "open", "grasped": 1}, {_block(c): "drawer", "grasped": 0}) for c in BLOCKS
    ]
    pairs = [(top, bottom) for top in BLOCKS for bottom in BLOCKS if top != bottom]
    rules["stack_block"] = [
        ({_block(t): "grasped", _block(b): "table", "grasped": 1},
         {_block(t): "stacked_top", _block(b): "stacked_bottom", "grasped": 0}) for t, b in pairs
    ]
    rules["unstack_block"] = [
        ({_block(t): "stacked_top", _block(b): "stacked_bottom", "grasped": 0}, {_block(t): "table", _block(b): "table"})
        for t, b in pairs
    ]
    for light in ("lightbulb", "led"):
        rules[f"turn_on_{light}"] = [({light: 0, "grasped": 0}, {light: 1})]
        rules[f"turn_off_{light}"] = [({light: 1, "grasped": 0}, {light: 0})]
    in_slider = ["slider_right", "slider_left"]
    rules["push_into_drawer"] = [
        ({_block(c): "table", **{_block(o): in_slider for o in BLOCKS if o != c}, "drawer": "open", "grasped": 0},
         {_block(c): "drawer", "grasped": 0})
        for c in ("red", "blue", "pink")
    ]
    return rules


TASK_RULES: dict[str, list[Rule]] = _task_rules()
TASK_NAMES: tuple[str, ...] = tuple(TASK_RULES)

# A chain never repeats a category: e.g. every rotate / push task is category 1.
TASK_CATEGORIES: dict[str, int] = {
    **{f"{v}_{c}_block_{s}": 1 for v in ("rotate", "push") for c in BLOCKS for s in ("right", "left")},
    "move_slider_left": 2, "move_slider_right": 2,
    "open_drawer": 3, "close_drawer": 3,
    **{f"lift_{c}_block_table": 4 for c in BLOCKS},
    **{f"lift_{c}_block_slider": 5 for c in BLOCKS},
    **{f"lift_{c}_block_drawer": 6 for c in BLOCKS},
    "place_in_slider": 7, "place_in_drawer": 7,
    "turn_on_lightbulb": 8, "turn_off_lightbulb": 8, "turn_on_led": 8, "turn_off_led": 8,
    "push_into_drawer": 9,
    "stack_block": 10,
    "unstack_block": 11,
}


def _holds(state: State, condition: dict[str, Any]) -> bool:
    return all(state[k] in v if isinstance(v, list) else state[k] == v for k, v in condition.items())


def next_states(state: State, task: str) -> list[State]:
    """The states `task` can lead to from `state` (one per rule whose condition holds)."""
    return [{**state, **effect} for condition, effect in TASK_RULES[task] if _holds(state, condition)]


def is_valid_chain(state: State, chain: Sequence[str]) -> bool:
    """Every task has exactly one applicable rule in turn, and no category repeats."""
    for task in chain:
        nxt = next_states(state, task)
        if len(nxt) != 1:
            return False
        state = nxt[0]
    categories = [TASK_CATEGORIES[t] for t in chain]
    return len(set(categories)) == len(categories)


def initial_states() -> list[State]:
    """The 192 symbolic start states, in the protocol's order."""
    def allowed(places: Sequence) -> bool:
        return places.count("table") in (1, 2) and places.count("slider_right") < 2 and places.count("slider_left") < 2

    return [dict(zip(STATE_KEYS, values)) for values in itertools.product(*START_VALUES.values()) if allowed(values)]


def _chains_for_state(state: State, count: int, seed: int) -> list[tuple[str, ...]]:
    """`count` valid chains drawn by rejection from RandomState(seed), in draw order.

    A draw is `choice(TASK_NAMES, 5, replace=False)`, which for a population of 34 is
    `permutation(34)[:5]`; drawing the indices directly consumes the same random stream
    (~10 us a draw instead of ~40 us). Valid chains are rare (~1 in 2,000-14,000 draws),
    so the category test, which most draws fail, runs first."""
    rng = np.random.RandomState(seed)
    categories = np.array([TASK_CATEGORIES[t] for t in TASK_NAMES])
    chains: list[tuple[str, ...]] = []
    while len(chains) < count:
        idx = rng.permutation(len(TASK_NAMES))[:CHAIN_LENGTH]
        if len(set(categories[idx].tolist())) < CHAIN_LENGTH:
            continue
        chain = tuple(TASK_NAMES[i] for i in idx)
        if is_valid_chain(state, chain):
            chains.append(chain)
    return chains


Sequences = tuple[tuple[State, tuple[str, ...]], ...]  # (start state, 5 task names) per chain
SHIPPED = Path(__file__).with_name(f"calvin_sequences_{NUM_SEQUENCES}.json")


def chains_per_state(num_sequences: int) -> list[int]:
    """How many chains each of the 192 start states gets (np.array_split's sizes)."""
    return [len(part) for part in np.array_split(np.arange(num_sequences), len(initial_states()))]


def shuffle_order(num_sequences: int) -> list[int]:
    """Position p of the final list holds chain shuffle_order[p] of the unshuffled list
    (states in order, each state's chains in draw order)."""
    order = list(range(num_sequences))
    np.random.RandomState(0).shuffle(order)  # a list: shuffled element by element, like the pairs
    return order


def generate_sequences(num_sequences: int = NUM_SEQUENCES) -> Sequences:
    """The evaluation chains: `num_sequences` (start state, 5 task names), deterministic."""
    if num_sequences < 1:
        raise ValueError(f"CALVIN num_sequences must be >= 1, got {num_sequences}")
    pairs: list[tuple[State, tuple[str, ...]]] = []
    for i, (state, count) in enumerate(zip(initial_states(), chains_per_state(num_sequences))):
        pairs.extend((state, chain) for chain in _chains_for_state(state, count, seed=i))
    return tuple(pairs[k] for k in shuffle_order(num_sequences))


def to_rows(sequences: Sequences) -> list[list]:
    """JSON rows [state values (STATE_KEYS order), task names]."""
    return [[[state[k] for k in STATE_KEYS], list(chain)] for state, chain in sequences]


def from_rows(rows: list) -> Sequences:
    return tuple((dict(zip(STATE_KEYS, values)), tuple(chain)) for values, chain in rows)


@functools.lru_cache(maxsize=8)
def get_sequences(num_sequences: int = NUM_SEQUENCES) -> Sequences:
    """`generate_sequences(num_sequences)`, read from the shipped file for the official
    1000. Cached and shared: do not modify the state dicts."""
    if num_sequences == NUM_SEQUENCES and SHIPPED.is_file():
        return from_rows(json.loads(SHIPPED.read_text()))
    return generate_sequences(num_sequences)


def write_rows(rows: list, path: Path) -> None:
    """One chain a line, so the file diffs chain by chain."""
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")


# ------------------------------------------------------------ simulator start states

FNV_32_PRIME = 0x01000193


def fnv1_32(data: bytes, basis: int = 0) -> int:
    """32-bit FNV-1 (multiply, then xor each byte). Basis 0 is pyhash.fnv1_32()'s default."""
    h = basis
    for byte in data:
        h = ((h * FNV_32_PRIME) & 0xFFFFFFFF) ^ byte
    return h


def state_hash(state: State) -> int:
    """The seed of a start state's block yaws: pyhash.fnv1_32()(str(state.values())), which
    hashes a str as its UTF-16-LE bytes."""
    return fnv1_32(str(state.values()).encode("utf-16-le"))


# The robot's start pose in every evaluation chain (robot_obs layout of calvin_env: tcp
# position (3), tcp euler xyz (3), gripper opening width, 7 arm joints, gripper action).
START_ROBOT_OBS = np.array([
    0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
    -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0,
])
BLOCK_YAW_RANGE = (math.pi / 2 - math.pi / 8, math.pi / 2 + math.pi / 8)
BLOCK_POSITIONS = {
    "slider_left": np.array([-2.40851662e-01, 9.24044687e-02, 4.60990009e-01]),
    "slider_right": np.array([7.03416330e-02, 9.24044687e-02, 4.60990009e-01]),
}
TABLE_POSITIONS = (
    np.array([5.00000896e-02, -1.20000177e-01, 4.59990009e-01]),
    np.array([2.29995412e-01, -1.19995140e-01, 4.59990010e-01]),
)
SLIDER_LEFT_POSITION = 0.28  # scene_obs[0] when the sliding door is left (joint units)
DRAWER_OPEN_POSITION = 0.22  # scene_obs[1] when the drawer is open
SWITCH_ON_POSITION = 0.088  # scene_obs[3] when the lightbulb switch is up


def scene_obs_for(state: State) -> tuple[np.ndarray, np.ndarray]:
    """(robot_obs (15,), scene_obs (24,)) of a symbolic start state.

    scene_obs layout (calvin_env, blocks in the order red, blue, pink): slider, drawer,
    button, switch, lightbulb, led, then per block position (3) and euler xyz (3). Blocks on
    the table take the two table spots in an order, and the yaws in [pi/2 - pi/8, pi/2 +
    pi/8], drawn from RandomState(state_hash(state)): shuffle, then one yaw per block.
    """
    rng = np.random.RandomState(state_hash(state))
    table = list(TABLE_POSITIONS)
    rng.shuffle(table)
    scene = np.zeros(24)
    scene[0] = SLIDER_LEFT_POSITION if state["slider"] == "left" else 0.0
    scene[1] = DRAWER_OPEN_POSITION if state["drawer"] == "open" else 0.0
    scene[3] = SWITCH_ON_POSITION if state["lightbulb"] == 1 else 0.0
    scene[4] = state["lightbulb"]
    scene[5] = state["led"]

    def place(block: str, table_spot: int) -> np.ndarray:
        where = state[_block(block)]
        return BLOCK_POSITIONS[where] if where in BLOCK_POSITIONS else table[table_spot]

    # red takes table spot 0; blue spot 1 when red is on the table too, else spot 0; pink spot 1.
    spots = {"red": 0, "blue": 1 if state["red_block"] == "table" else 0, "pink": 1}
    for k, block in enumerate(BLOCKS):
        offset = 6 + 6 * k
        scene[offset:offset + 3] = place(block, spots[block])
        scene[offset + 5] = rng.uniform(*BLOCK_YAW_RANGE)
    return START_ROBOT_OBS.copy(), scene


def main() -> None:
    p = argparse.ArgumentParser(description="Write or check the shipped CALVIN evaluation chains.")
    p.add_argument("--write", action="store_true", help=f"generate and write {SHIPPED.name}")
    p.add_argument("--check", action="store_true", help=f"generate and compare with {SHIPPED.name}")
    args = p.parse_args()
    rows = to_rows(generate_sequences(NUM_SEQUENCES))
    if args.write:
        write_rows(rows, SHIPPED)
        print(f"wrote {len(rows)} chains to {SHIPPED}")
    if args.check:
        shipped = json.loads(SHIPPED.read_text())
        bad = [i for i, (a, b) in enumerate(zip(rows, shipped)) if a != b]
        if bad or len(rows) != len(shipped):
            raise SystemExit(f"{SHIPPED} differs from a fresh generation at chains {bad[:10]}")
        print(f"{SHIPPED.name}: all {len(rows)} chains equal a fresh generation")


if __name__ == "__main__":
    main()
