"""Every frame of a camera, decoded once into memory: the trainers' frame cache.

Random access into mp4 on the CPU costs a seek and a partial GOP decode per sample, far more than a
training step of a small model. LeRobot v3 concatenates episodes into shared mp4 files, so each file
is decoded once, front to back, with PyAV, and every episode is sliced out of it by the
`from_timestamp` LeRobot's metadata gives it. Each tier resizes the native frames with its own
inference-time resize, so training and acting see the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def decode_camera(dataset, key: str, progress: bool = False, resize=None, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3] of camera ``key`` for every frame, in dataset index order.

    ``resize``: a function uint8 [n, H, W, 3] -> uint8 [n, h, w, 3] applied to chunks of frames as they are
    decoded, so memory holds the resized frames plus one chunk of native frames.
    ``out``: an array (or a view, e.g. one camera of a trainer's cache) of that shape to fill and return.
    """
    if len(dataset.hf_dataset) != dataset.meta.total_frames:
        raise ValueError(f"{dataset.root}: {len(dataset.hf_dataset)} frames loaded of {dataset.meta.total_frames}; "
                         "reopen a just-written dataset with hybrid.data.open_dataset(root)")
    resize = resize or (lambda frames: frames)
    if key not in dataset.meta.video_keys:  # images stored in the parquet files
        column = dataset.hf_dataset.with_format(None).select_columns([key])[key]
        frames = resize(np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in column]))
        if out is None:
            return frames
        out[:] = frames
        return out
    import av
    from tqdm import tqdm

    meta, fps = dataset.meta, dataset.fps
    table = dataset.hf_dataset.with_format(None).select_columns(["episode_index", "frame_index"])[:]
    episodes = np.asarray(table["episode_index"])
    frame_index = np.asarray(table["frame_index"])
    by_file: dict[Path, list[int]] = {}
    for ep in np.unique(episodes).tolist():
        by_file.setdefault(dataset.root / meta.get_video_file_path(ep, key), []).append(ep)
    bar = tqdm(total=len(episodes), desc=f"decoding {key}", unit="frame", disable=not progress)
    for path, eps in sorted(by_file.items()):
        # Which dataset rows each frame of this file fills (a file holds many episodes, back to back).
        rows = np.flatnonzero(np.isin(episodes, eps))
        first = {ep: int(round(meta.episodes[ep][f"videos/{key}/from_timestamp"] * fps)) for ep in eps}
        wanted = np.array([first[ep] for ep in episodes[rows].tolist()]) + frame_index[rows]
        order = np.argsort(wanted, kind="stable")
        rows, wanted = rows[order], wanted[order]
        # Streamed in chunks: memory holds one chunk of native frames, never the whole file.
        chunk_rows, chunk, k = [], [], 0
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                while k < len(wanted) and wanted[k] == i:
                    chunk_rows.append(rows[k])
                    chunk.append(frame.to_ndarray(format="rgb24"))
                    k += 1
                if len(chunk) >= 1024 or (k == len(wanted) and chunk):
                    out = _fill(out, len(episodes), np.asarray(chunk_rows), resize(np.stack(chunk)))
                    bar.update(len(chunk))
                    chunk_rows, chunk = [], []
                if k == len(wanted):
                    break
        if k < len(wanted):
            raise ValueError(f"{path}: frame {wanted[k]} is needed, the file ends before it")
    bar.close()
    return out


def _fill(out: np.ndarray | None, n: int, rows: np.ndarray, frames: np.ndarray) -> np.ndarray:
    if out is None:
        out = np.empty((n, *frames.shape[1:]), np.uint8)
    out[rows] = frames
    return out


def numeric_column(dataset, key: str) -> np.ndarray:
    """A per-frame numeric feature (state, action) as float32 [N, D], in dataset index order."""
    column = dataset.hf_dataset.with_format(None).select_columns([key])[key]
    return np.asarray(column, np.float32).reshape(len(column), -1)


def action_chunks(actions: np.ndarray, episode_end: np.ndarray, i: int | np.ndarray,
                  horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Actions i..i+horizon-1 of frame i's episode, the last one repeated past its end, and the padding mask
    (what LeRobot's delta timestamps give, read from memory). ``i`` may be a column of frames ``(N, 1)``:
    then every one's chunk at once, ``(N, horizon, A)`` and ``(N, horizon)``."""
    idx = i + np.arange(horizon)
    pad = idx > episode_end[i]
    return actions[np.minimum(idx, episode_end[i])], pad
