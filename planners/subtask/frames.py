"""Decode a dataset's camera frames once into an in-memory uint8 cache at the planner's resolution.

Seeking into an mp4 per sample is what makes CPU training slow; reading each video file front to
back once, resizing on the fly, costs a few seconds per thousand frames and a few KiB per frame.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from tqdm import tqdm


def _resize(img, size: int) -> np.ndarray:
    from PIL import Image

    img = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


def decode_frames(dataset, camera_key: str, size: int) -> np.ndarray:
    """uint8 [N, size, size, 3]: frame ``i`` of the dataset (its global index) from ``camera_key``."""
    n = dataset.meta.total_frames
    out = np.zeros((n, size, size, 3), np.uint8)
    if camera_key not in dataset.meta.video_keys:  # images stored in the parquet files
        column = dataset.hf_dataset.with_format(None).select_columns([camera_key, "index"])
        for row in tqdm(column, total=n, desc=f"frames {camera_key}", leave=False):
            out[row["index"]] = _resize(row[camera_key], size)
        return out
    import av

    table = dataset.hf_dataset.with_format(None).select_columns(["index", "episode_index", "timestamp"])[:]
    fps = float(dataset.fps)
    by_file: dict[str, list[int]] = defaultdict(list)
    for ep in range(dataset.meta.total_episodes):
        by_file[str(dataset.meta.get_video_file_path(ep, camera_key))].append(ep)
    episodes = np.asarray(table["episode_index"])
    timestamps = np.asarray(table["timestamp"], np.float64)
    index = np.asarray(table["index"])
    for path, eps in tqdm(sorted(by_file.items()), desc=f"videos {camera_key}", leave=False):
        with av.open(str(dataset.root / path)) as container:
            decoded = [_resize(f.to_image(), size) for f in container.decode(video=0)]
        for ep in eps:
            start = float(dataset.meta.episodes[ep][f"videos/{camera_key}/from_timestamp"])
            rows = np.flatnonzero(episodes == ep)
            # Frames are evenly spaced at the dataset's fps inside each concatenated file.
            k = np.clip(np.round((start + timestamps[rows]) * fps).astype(int), 0, len(decoded) - 1)
            out[index[rows]] = np.stack([decoded[j] for j in k])
    return out
