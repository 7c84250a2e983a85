"""A scripted pick-and-place for PutCubeOnPlate-v0: the physics check of the task (a cube
can be grasped, carried and set down so that `success` fires) and a source of demos.

It reads ManiSkill's full state vector (`state_mode: full`), whose last 21 entries are the
TCP, cube and plate poses (7 each: position, then quaternion), and emits
`pd_ee_target_delta_pose` actions. ManiSkill-GS's arm is not gravity compensated
(balance_passive_force False), so the TCP hangs ~2 cm below its target; moving the target by
a fraction of the remaining TCP error each step is integral action and removes that offset.
"""
from __future__ import annotations

import numpy as np

GAIN = 0.7  # fraction of the TCP error added to the target per step
REACHED = 0.012  # m: a waypoint counts as reached
GRIP_STEPS = 4  # steps to close or open the gripper in place
ABOVE, CARRY = 0.08, 0.15  # m: approach height above the cube, carrying height
PLACE = 0.06  # m: TCP height above the plate's origin when releasing


class PickPlaceExpert:
    """Waypoints: above the cube, down to it, close, lift, over the plate, down, open."""

    def __init__(self) -> None:
        self.phase, self.hold = 0, 0

    def __call__(self, state: np.ndarray) -> np.ndarray:
        """(46,) full state -> (7,) action: Δposition (±0.1 m), Δrotation (0), gripper (±1)."""
        tcp, cube, plate = state[-21:-18], state[-14:-11], state[-7:-4]
        waypoints = [cube + [0, 0, ABOVE], cube, None, np.r_[cube[:2], CARRY], np.r_[plate[:2], CARRY],
                     np.r_[plate[:2], plate[2] + PLACE], None]
        p = min(self.phase, len(waypoints) - 1)
        grip = -1.0 if 2 <= p <= 5 else 1.0
        goal = waypoints[p]
        if goal is None:  # close (phase 2) or open (phase 6) the gripper in place
            goal = tcp
            self.hold += 1
            if self.hold >= GRIP_STEPS:
                self.phase, self.hold = self.phase + 1, 0
        elif np.linalg.norm(goal - tcp) < REACHED:
            self.phase += 1
        return np.r_[np.clip(GAIN * (goal - tcp), -0.1, 0.1), 0.0, 0.0, 0.0, grip].astype(np.float32)
