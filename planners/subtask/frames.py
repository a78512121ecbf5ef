"""A dataset's camera frames at the planner's resolution, decoded once into memory."""

from __future__ import annotations

import numpy as np

from hybrid.data import FEATURES, decode_camera


def _resize(img, size: int) -> np.ndarray:
    from PIL import Image

    img = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


def camera_key(camera: str) -> str:
    """The recorded feature of a camera name (`observation.images.<camera>`); the first camera if none."""
    return next((k for k in FEATURES["cameras"] if k.endswith("." + camera)), FEATURES["cameras"][0])


def decode_frames(dataset, camera_key: str, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [N, size, size, 3]: frame ``i`` of the dataset (its global index) from ``camera_key``."""
    def resize(frames: np.ndarray) -> np.ndarray:
        if frames.shape[1:3] == (size, size):
            return frames
        return np.stack([_resize(f, size) for f in frames])

    return decode_camera(dataset, camera_key, progress=True, resize=resize, out=out)


def decode_views(dataset, cameras: list[str], size: int) -> np.ndarray:
    """uint8 [N, size, size * len(cameras), 3]: the cameras' frames side by side, as `prompting.tile` shows
    them to the planner."""
    if len(cameras) == 1:
        return decode_frames(dataset, camera_key(cameras[0]), size)
    out = np.empty((dataset.meta.total_frames, size, size * len(cameras), 3), np.uint8)
    for j, cam in enumerate(cameras):
        decode_frames(dataset, camera_key(cam), size, out=out[:, :, j * size:(j + 1) * size])
    return out
