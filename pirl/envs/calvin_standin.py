"""A small in-process stand-in for calvin_env, for tests where no CALVIN checkout exists (CI).

It implements the surface pirl.envs.calvin.CalvinEnv uses, with calvin_env's layouts:

    StandInPlayTableEnv  cameras (static, gripper), reset(robot_obs, scene_obs) -> obs,
                         step(action) -> (obs, 0, False, info), get_obs(), get_info(), close()
    StandInTasks         get_task_info_for_set(start_info, end_info, task_filter) -> set

robot_obs (15,): tcp position (3), tcp euler (3), gripper opening width, 7 arm joints,
gripper action. scene_obs (24,): slider, drawer, button, switch, lightbulb, led, then
position (3) + euler (3) of the red, blue and pink blocks. The robot is kinematic: a
relative action moves the tcp by 2 cm / 0.05 rad per unit (calvin_env's max_rel_pos /
max_rel_orn) and the fingers open or close 1 cm a step; like calvin_env's Robot it refuses a
gripper action other than -1 or 1. One thing the robot can do: the tcp going below
z = 0.45 presses the button, which toggles the led (calvin_env's button and led), so a
policy can complete turn_on_led / turn_off_led by moving down. Everything else changes
only through reset(robot_obs=current, scene_obs=changed), which works the same on
calvin_env.

Its oracle knows the door, light and block tasks with calvin_env's thresholds (slider
0.15, drawer 0.12, rotation 60 degrees, push 0.1 in x, lift 0.05); placing, stacking and
pushing into the drawer never succeed here. Images are small drawings of the state
(static camera: the tcp as a white square over a scene-coloured background, the lights as
patches; gripper camera: the opening width), enough to see which camera lands where.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from pirl.envs.calvin_sequences import START_ROBOT_OBS, TASK_NAMES

MAX_REL_POS, MAX_REL_ORN = 0.02, 0.05  # calvin_env Robot: units of a relative action
FINGER_SPEED = 0.01  # opening width change per step
BUTTON_PRESS_Z = 0.45  # tcp height below which the button is pressed
MAX_WIDTH = 0.08
SCENE_COLOURS = {"A": (90, 60, 40), "B": (60, 90, 40), "C": (40, 60, 90), "D": (80, 80, 80)}
BLOCKS = ("block_red", "block_blue", "block_pink")


class StandInCamera:
    def __init__(self, name: str, size: int, draw):
        self.name, self.width, self.height = name, size, size
        self._draw = draw

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        rgb = self._draw(self.width)
        return rgb, np.zeros(rgb.shape[:2], dtype=np.float32)


class StandInPlayTableEnv:
    """calvin_env.envs.play_table_env.PlayTableSimEnv's surface, kinematic."""

    def __init__(self, scene: str = "D", main_size: int = 200, wrist_size: int = 84):
        self.scene_name = scene
        self.robot_obs = START_ROBOT_OBS.copy()
        self.scene_obs = np.zeros(24)
        self.steps = 0
        self.closed = False
        self._pressed = False
        self.cameras = [StandInCamera("static", main_size, self._draw_static),
                        StandInCamera("gripper", wrist_size, self._draw_gripper)]

    # ------------------------------------------------------------------ images
    def _draw_static(self, size: int) -> np.ndarray:
        img = np.empty((size, size, 3), dtype=np.uint8)
        img[:] = SCENE_COLOURS[self.scene_name]
        x, y = self.robot_obs[:2]
        col = int(np.clip((x + 0.5) * size, 0, size - 4))
        row = int(np.clip((0.5 - y) * size, 0, size - 4))
        img[row:row + 4, col:col + 4] = 255
        img[:8, :8] = (255, 255, 0) if self.scene_obs[4] >= 0.5 else (30, 30, 30)  # lightbulb
        img[:8, -8:] = (0, 255, 0) if self.scene_obs[5] >= 0.5 else (30, 30, 30)  # led
        return img

    def _draw_gripper(self, size: int) -> np.ndarray:
        img = np.zeros((size, size, 3), dtype=np.uint8)
        img[..., 2] = int(255 * self.robot_obs[6] / MAX_WIDTH)
        img[size // 2, :, 0] = 200
        return img

    # ----------------------------------------------------------------- surface
    def reset(self, robot_obs: Optional[np.ndarray] = None, scene_obs: Optional[np.ndarray] = None):
        self.robot_obs = (START_ROBOT_OBS if robot_obs is None else np.asarray(robot_obs, dtype=np.float64)).copy()
        self.scene_obs = (np.zeros(24) if scene_obs is None else np.asarray(scene_obs, dtype=np.float64)).copy()
        if self.robot_obs.shape != (15,) or self.scene_obs.shape != (24,):
            raise ValueError(f"robot_obs (15,) and scene_obs (24,) expected, got {self.robot_obs.shape}, "
                             f"{self.scene_obs.shape}")
        self._pressed = bool(self.robot_obs[2] < BUTTON_PRESS_Z)
        return self.get_obs()

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64)
        assert action.shape == (7,), action.shape
        assert action[6] in (-1, 1), f"gripper action must be -1 or 1, got {action[6]}"  # as calvin_env's Robot
        self.robot_obs[:3] += MAX_REL_POS * action[:3]
        self.robot_obs[3:6] += MAX_REL_ORN * action[3:6]
        target = MAX_WIDTH if action[6] > 0 else 0.0
        self.robot_obs[6] += np.clip(target - self.robot_obs[6], -FINGER_SPEED, FINGER_SPEED)
        self.robot_obs[14] = action[6]
        pressed = bool(self.robot_obs[2] < BUTTON_PRESS_Z)
        if pressed and not self._pressed:
            self.scene_obs[5] = 1.0 - self.scene_obs[5]
        self._pressed = pressed
        self.scene_obs[2] = float(pressed)
        self.steps += 1
        return self.get_obs(), 0, False, self.get_info()

    def get_obs(self) -> dict[str, Any]:
        rgb, depth = {}, {}
        for cam in self.cameras:
            rgb[f"rgb_{cam.name}"], depth[f"depth_{cam.name}"] = cam.render()
        return {"rgb_obs": rgb, "depth_obs": depth, "robot_obs": self.robot_obs.copy(),
                "scene_obs": self.scene_obs.copy()}

    def get_info(self) -> dict[str, Any]:
        s = self.scene_obs
        return {
            "robot_info": {"tcp_pos": tuple(self.robot_obs[:3]), "tcp_orn": tuple(self.robot_obs[3:6]),
                           "gripper_opening_width": float(self.robot_obs[6]),
                           "gripper_action": float(self.robot_obs[14]), "uid": 0, "contacts": ()},
            "scene_info": {
                "doors": {"base__slide": {"current_state": float(s[0])}, "base__drawer": {"current_state": float(s[1])}},
                "buttons": {"base__button": {"joint_state": float(s[2])}},
                "switches": {"base__switch": {"joint_state": float(s[3])}},
                "lights": {"lightbulb": {"logical_state": int(round(s[4]))}, "led": {"logical_state": int(round(s[5]))}},
                "movable_objects": {name: {"current_pos": tuple(s[6 + 6 * k:9 + 6 * k]),
                                           "current_euler": tuple(s[9 + 6 * k:12 + 6 * k])}
                                    for k, name in enumerate(BLOCKS)},
            },
        }

    def close(self) -> None:
        self.closed = True


def _door(joint: str, threshold: float):
    def done(start: dict, end: dict) -> bool:
        delta = (end["scene_info"]["doors"][joint]["current_state"]
                 - start["scene_info"]["doors"][joint]["current_state"])
        return delta > threshold if threshold > 0 else delta < threshold
    return done


def _light(light: str, before: int, after: int):
    def done(start: dict, end: dict) -> bool:
        return (start["scene_info"]["lights"][light]["logical_state"] == before
                and end["scene_info"]["lights"][light]["logical_state"] == after)
    return done


def _block(name: str, kind: str, amount: float):
    def done(start: dict, end: dict) -> bool:
        a, b = start["scene_info"]["movable_objects"][name], end["scene_info"]["movable_objects"][name]
        if kind == "rotate":
            delta = math.degrees(b["current_euler"][2] - a["current_euler"][2])
            return delta > amount if amount > 0 else delta < amount
        axis = 0 if kind == "push" else 2
        delta = b["current_pos"][axis] - a["current_pos"][axis]
        return delta > amount if amount > 0 else delta < amount
    return done


class StandInTasks:
    """calvin_env.envs.tasks.Tasks' get_task_info_for_set, for the tasks the stand-in models."""

    def __init__(self):
        checks = {
            "move_slider_left": _door("base__slide", 0.15), "move_slider_right": _door("base__slide", -0.15),
            "open_drawer": _door("base__drawer", 0.12), "close_drawer": _door("base__drawer", -0.12),
            "turn_on_lightbulb": _light("lightbulb", 0, 1), "turn_off_lightbulb": _light("lightbulb", 1, 0),
            "turn_on_led": _light("led", 0, 1), "turn_off_led": _light("led", 1, 0),
        }
        for color, name in zip(("red", "blue", "pink"), BLOCKS):
            checks[f"rotate_{color}_block_right"] = _block(name, "rotate", -60.0)
            checks[f"rotate_{color}_block_left"] = _block(name, "rotate", 60.0)
            checks[f"push_{color}_block_right"] = _block(name, "push", 0.1)
            checks[f"push_{color}_block_left"] = _block(name, "push", -0.1)
            for where in ("table", "slider", "drawer"):
                checks[f"lift_{color}_block_{where}"] = _block(name, "lift", 0.05)
        self.checks = checks

    def get_task_info_for_set(self, start_info: dict, end_info: dict, task_filter: set) -> set:
        return {t for t in task_filter if t in self.checks and self.checks[t](start_info, end_info)}


class StandInSource:
    """`pirl.envs.calvin.CalvinFactory` source without a checkout: stand-in sims and
    instructions made from the task names (validation: one sentence; train: three)."""

    def build(self, scene: str, main_size: int, wrist_size: int, use_egl: bool) -> tuple[Any, Any]:
        return StandInPlayTableEnv(scene, main_size, wrist_size), StandInTasks()

    def instructions(self, which: str) -> dict[str, list[str]]:
        words = {t: t.replace("_", " ") for t in TASK_NAMES}
        if which == "validation":
            return {t: [w] for t, w in words.items()}
        return {t: [f"please {w}", f"{w} now", f"could you {w}"] for t, w in words.items()}
