"""The plan-stack view in Rerun: a subscriber that logs every level of the stack at every step.

Entity hierarchy:
  instruction                  the episode's instruction (TextDocument)
  plan/subtasks                the subtask list with status (markdown)
  plan/subgoal/<camera>        the current subgoal image(s), beside
  obs/<camera>                 the live camera image(s)
  obs/state                    proprioceptive state (time series)
  executor/action              the executed action (time series)
  executor/chunk               the current action chunk, one curve per action dimension over its horizon
  executor/chunk_path          the chunk as a 3-D effector path, where the action is a position
  latency/<tier>               per-tier latency in ms (time series)
  faults                       tier faults (text log)
  runtime/<gauge>              async runtime gauges: queue_depth, missed_deadlines, seam (time series)
Timelines: `step` (control step) and `time` (wall clock).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from hybrid.runtime.subscriber import EpisodeResult
from hybrid.types import StepRecord

STATUS_MARK = {"done": "✅", "active": "▶️", "pending": "⏳", "failed": "❌"}


class RerunViewConfig(BaseModel):
    mode: Literal["spawn", "save", "serve", "off"] = "off"
    path: str | None = None  # the .rrd file for mode=save
    app_id: str = "hybrid"
    # Action dimensions that are an effector position (x, y, z); None when the action is no position.
    position_dims: list[int] | None = [0, 1, 2]
    # True when those dimensions are per-step deltas added to the state's position dimensions.
    position_is_delta: bool = True
    state_position_dims: list[int] = [0, 1, 2]


class RerunView:
    """Logs the plan stack of a run to a Rerun recording (spawned viewer, .rrd file, or served)."""

    def __init__(self, config: RerunViewConfig | None = None):
        import rerun as rr

        self.rr = rr
        self.config = cfg = config or RerunViewConfig()
        self.rec = rr.RecordingStream(cfg.app_id)
        self._blueprint_sent = False
        self._last_subgoal: float | None = None
        self._last_chunk: float | None = None
        self._last_plan: tuple | None = None
        self.episode = 0
        if cfg.mode == "save":
            if not cfg.path:
                raise ValueError("viz.path: expected a .rrd file path for mode=save")
            self.rec.save(cfg.path)
        elif cfg.mode == "spawn":
            self.rec.spawn()
        elif cfg.mode == "serve":
            url = self.rec.serve_grpc()
            rr.serve_web_viewer(connect_to=url)
            print(f"Rerun: serving at {url}")

    @property
    def enabled(self) -> bool:
        return self.config.mode != "off"

    def on_episode_start(self, instruction: str, info: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rr = self.rr
        self.episode += 1
        self._last_plan = self._last_subgoal = self._last_chunk = None
        known = info.get("subtasks")
        text = f"# Episode {self.episode}\n\n**{instruction}**"
        if known:
            text += "\n\nReference plan: " + " → ".join(map(str, known))
        self.rec.log("instruction", rr.TextDocument(text, media_type=rr.MediaType.MARKDOWN))

    def on_step(self, record: StepRecord) -> None:
        if not self.enabled:
            return
        rr, rec = self.rr, self.rec
        if not self._blueprint_sent and record.observation is not None:
            rec.send_blueprint(self._blueprint(list(record.observation.images)))
            self._blueprint_sent = True
        rec.set_time("step", sequence=record.step)
        rec.set_time("time", timestamp=record.wall_time)
        plan = tuple((s.text, s.status) for s in record.subtasks)
        if plan != self._last_plan:
            lines = [f"{i + 1}. {STATUS_MARK[s.status]} {s.text}" for i, s in enumerate(record.subtasks)]
            rec.log("plan/subtasks", rr.TextDocument("\n".join(lines) or "_no subtask yet_", media_type=rr.MediaType.MARKDOWN))
            self._last_plan = plan
        obs = record.observation
        if obs is not None:
            for cam, img in obs.images.items():
                rec.log(f"obs/{cam}", rr.Image(img))
            rec.log("obs/state", rr.Scalars(obs.state.astype(np.float64)))
        sg = record.subgoal
        if sg is not None and sg.created_at != self._last_subgoal:
            for cam, img in sg.images.items():
                rec.log(f"plan/subgoal/{cam}", rr.Image(img))
            self._last_subgoal = sg.created_at
        chunk = record.chunk
        if chunk is not None and chunk.start_time != self._last_chunk:
            self._log_chunk(chunk.actions, chunk.dt, None if obs is None else obs.state)
            if chunk.note:
                rec.log("executor/notes", rr.TextLog(chunk.note, level=rr.TextLogLevel.INFO))
            self._last_chunk = chunk.start_time
        if record.action is not None:
            rec.log("executor/action", rr.Scalars(record.action.astype(np.float64)))
        for tier, ms in record.latency_ms.items():
            rec.log(f"latency/{tier}", rr.Scalars(ms))
        for fault in record.faults:
            rec.log("faults", rr.TextLog(str(fault), level=rr.TextLogLevel.WARN))

    def on_runtime(self, step: int, metrics: dict[str, float]) -> None:
        """Async runtime gauges, on the step timeline (the step's other entities were just logged)."""
        if not self.enabled:
            return
        self.rec.set_time("step", sequence=step)
        for name, value in metrics.items():
            self.rec.log(f"runtime/{name}", self.rr.Scalars(float(value)))

    def _log_chunk(self, actions: np.ndarray, dt: float, state: np.ndarray | None) -> None:
        rr, cfg = self.rr, self.config
        t = np.arange(len(actions)) * dt
        strips = [np.stack([t, actions[:, j]], axis=1) for j in range(actions.shape[1])]
        self.rec.log("executor/chunk", rr.LineStrips2D(strips, labels=[f"a{j}" for j in range(actions.shape[1])]))
        dims = cfg.position_dims
        if dims and max(dims) < actions.shape[1]:
            path = actions[:, dims].astype(np.float64)
            if cfg.position_is_delta:
                sdims = cfg.state_position_dims
                known = state is not None and len(sdims) == len(dims) and max(sdims) < len(state)
                start = state[sdims].astype(np.float64) if known else np.zeros(len(dims))
                path = start + np.vstack([np.zeros(len(dims)), np.cumsum(path, axis=0)])
            self.rec.log("executor/chunk_path", rr.LineStrips3D([path]))

    def on_episode_end(self, result: EpisodeResult) -> None:
        if not self.enabled:
            return
        rr = self.rr
        lat = ", ".join(f"{k} p50 {v['p50']:.1f} ms" for k, v in result.latency_ms.items())
        text = (f"**{result.status}** (success={result.success}) after {result.steps} steps; "
                f"subtasks completed: {'/'.join(map(str, result.achieved()))}; {lat}")
        self.rec.log("episode/summary", rr.TextLog(text, level=rr.TextLogLevel.INFO))
        self.rec.flush()

    def close(self) -> None:
        if self.enabled:
            self.rec.flush()
            self.rec.disconnect()

    def _blueprint(self, cameras: list[str]):
        import rerun.blueprint as rrb

        cams = rrb.Grid(*[rrb.Spatial2DView(origin=f"obs/{c}", name=f"camera {c}") for c in cameras],
                        *[rrb.Spatial2DView(origin=f"plan/subgoal/{c}", name=f"subgoal {c}") for c in cameras],
                        grid_columns=max(1, len(cameras)))
        text = rrb.Vertical(rrb.TextDocumentView(origin="instruction", name="instruction"),
                            rrb.TextDocumentView(origin="plan/subtasks", name="subtasks"),
                            rrb.TextLogView(origin="faults", name="faults"),
                            rrb.TextLogView(origin="executor/notes", name="executor notes"),
                            rrb.TextLogView(origin="episode", name="episodes"))
        actions = rrb.Vertical(rrb.TimeSeriesView(origin="executor/action", name="executed action"),
                               rrb.Spatial2DView(origin="executor/chunk", name="action chunk"),
                               rrb.Spatial3DView(origin="executor/chunk_path", name="chunk path"),
                               rrb.TimeSeriesView(origin="latency", name="tier latency (ms)"),
                               rrb.TimeSeriesView(origin="runtime", name="runtime"))
        return rrb.Blueprint(rrb.Horizontal(text, cams, actions, column_shares=[1, 2, 2]), collapse_panels=True)
