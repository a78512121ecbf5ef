"""Hindsight waypoint labels: where each subtask's object is picked up and where it is put down.

A recording says it through the gripper: the effector's xy on the frame the gripper command turns on
is the pick, on the frame it turns off again the place. These labels supervise an auxiliary head of
the executor (`FlowConfig.waypoint_loss`) that must find both in the front image, which teaches the
vision encoder to locate the objects the subtask names long before the flow loss alone would.
"""

from __future__ import annotations

import numpy as np

GRIPPER_ON = 0.5  # gripper/suction commands at or above this hold


def pick_place_waypoints(state: np.ndarray, action: np.ndarray, subtask_end: np.ndarray,
                         gripper: int = -1, min_distance: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per frame ``(pick_x, pick_y, place_x, place_y)`` of its subtask, and which of the four supervise it.

    ``state[:, :2]`` is the effector's xy, ``action[:, gripper]`` the gripper command, ``subtask_end`` the
    last frame of each frame's subtask (`SubtaskIndex.subtask_end`). The last grasp and release of a
    subtask count (earlier ones were retries). Frames after the grasp do not supervise the pick, frames
    after the release neither; a subtask without both events supervises nothing. Nor does a frame whose
    effector is within ``min_distance`` of the waypoint: near it, "where the effector is" would be a
    good enough answer, and a head trained there learns to track the effector instead of the object.
    """
    n = len(state)
    targets, valid = np.zeros((n, 4), np.float32), np.zeros((n, 4), bool)
    for start, stop, grasp, release in subtask_events(action, subtask_end, gripper):
        targets[start:stop, :2], targets[start:stop, 2:] = state[grasp, :2], state[release, :2]
        valid[start:grasp + 1, :2] = True
        valid[start:release + 1, 2:] = True
    return targets, far_from_effector(state, targets, valid, min_distance)


def release_heights(state: np.ndarray, action: np.ndarray, subtask_end: np.ndarray, gripper: int = -1,
                    z: int = 2) -> np.ndarray:
    """Per frame the effector's height ``state[:, z]`` at its subtask's last release (NaN where the subtask has no
    grasp and release): how high the place is, which a camera that sees the table from the side needs to tell
    a tower's top from the table behind it."""
    heights = np.full(len(state), np.nan, np.float32)
    for start, stop, _, release in subtask_events(action, subtask_end, gripper):
        heights[start:stop] = state[release, z]
    return heights


def subtask_events(action: np.ndarray, subtask_end: np.ndarray, gripper: int = -1):
    """``(start, stop, grasp, release)`` frame indices for each subtask with a last grasp and a later release
    (``stop`` exclusive; earlier grasps and releases were retries)."""
    on = np.asarray(action[:, gripper]) >= GRIPPER_ON
    for start in np.r_[0, np.flatnonzero(np.diff(subtask_end)) + 1]:
        stop = int(subtask_end[start]) + 1
        seg = on[start:stop]
        before = np.r_[False, seg[:-1]]
        grasps, releases = np.flatnonzero(seg & ~before), np.flatnonzero(~seg & before)
        if len(grasps) and len(releases) and releases[-1] > grasps[-1]:
            yield start, stop, start + grasps[-1], start + releases[-1]


def far_from_effector(state: np.ndarray, targets: np.ndarray, valid: np.ndarray, min_distance: float) -> np.ndarray:
    """``valid`` without the frames whose effector is within ``min_distance`` of the waypoint (per pick / place)."""
    if min_distance <= 0:
        return valid
    valid = valid.copy()
    for xy in (slice(0, 2), slice(2, 4)):
        valid[:, xy] &= (np.linalg.norm(state[:, :2] - targets[:, xy], axis=1) >= min_distance)[:, None]
    return valid
