"""A dataset's camera frames at the planner's resolution, decoded once into memory."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from hybrid.data import decode_camera


def _resize(img, size: int) -> np.ndarray:
    from PIL import Image

    img = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


def decode_frames(dataset, camera_key: str, size: int) -> np.ndarray:
    """uint8 [N, size, size, 3]: frame ``i`` of the dataset (its global index) from ``camera_key``."""
    frames = decode_camera(dataset, camera_key, progress=True)
    if frames.shape[1:3] == (size, size):
        return frames
    out = np.empty((len(frames), size, size, 3), np.uint8)  # filled in place: no list of frames on the side
    for i, frame in enumerate(tqdm(frames, desc="resizing", leave=False)):
        out[i] = _resize(frame, size)
    return out
