"""A dataset's camera frames at the planner's resolution, decoded once into memory."""

from __future__ import annotations

import numpy as np

from hybrid.data import decode_camera


def _resize(img, size: int) -> np.ndarray:
    from PIL import Image

    img = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


def decode_frames(dataset, camera_key: str, size: int) -> np.ndarray:
    """uint8 [N, size, size, 3]: frame ``i`` of the dataset (its global index) from ``camera_key``."""
    def resize(frames: np.ndarray) -> np.ndarray:
        if frames.shape[1:3] == (size, size):
            return frames
        return np.stack([_resize(f, size) for f in frames])

    return decode_camera(dataset, camera_key, progress=True, resize=resize)
