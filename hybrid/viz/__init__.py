from hybrid.viz.rerun_view import RerunView, RerunViewConfig

__all__ = ["RerunView", "RerunViewConfig"]
