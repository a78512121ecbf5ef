"""Hydra composition from the project's `configs/` tree, for the CLI and for Python users alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"
# `${hybrid_root:}` in a config is the project's root, so shipped checkpoints resolve from any directory.
OmegaConf.register_new_resolver("hybrid_root", lambda: str(PROJECT_ROOT), replace=True)

SHIPPED_CHECKPOINTS = PROJECT_ROOT / "demos" / "tabletop" / "checkpoints"


def _tabletop_checkpoints(*, _root_: DictConfig) -> str:
    """The composed config's `checkpoints` where it sets one (a `hybrid train-demo` run's output, e.g.
    `hybrid eval checkpoints=DIR`), else the shipped ones."""
    return str(_root_.get("checkpoints", None) or SHIPPED_CHECKPOINTS)


# `${tabletop_checkpoints:}/planner`: a tabletop tier's checkpoint, from the set the config names.
OmegaConf.register_new_resolver("tabletop_checkpoints", _tabletop_checkpoints, replace=True)


def _tabletop_homography(camera: str = "front") -> list[list[float]]:
    from hybrid.envs.tabletop.scene import table_homography  # MuJoCo only when a config asks for it

    return table_homography(camera).round(6).tolist()


def _tabletop_projection(camera: str = "front") -> list[list[float]]:
    from hybrid.envs.tabletop.scene import camera_projection

    return camera_projection(camera).round(6).tolist()


# `${tabletop_homography:front}`: the built-in tabletop camera's calibration (table xy -> image), for configs;
# `${tabletop_projection:front}` the same camera's full projection (world xyz -> image).
OmegaConf.register_new_resolver("tabletop_homography", _tabletop_homography, replace=True)
OmegaConf.register_new_resolver("tabletop_projection", _tabletop_projection, replace=True)


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose `configs/<config_name>.yaml` with Hydra overrides (`planner=vllm`, `executor.steps=4`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def instantiate(node: DictConfig | dict[str, Any], **kwargs: Any) -> Any:
    """Build the object a config node describes (its `_target_`), e.g. a tier or an env."""
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(node, **kwargs)


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def print_config_help(config_name: str, argv: list[str]) -> None:
    cfg = compose(config_name, [a for a in argv if a not in ("-h", "--help")])
    groups = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())
    print(f"Hydra overrides, e.g. key=value or group=choice. Groups: {', '.join(groups)}")
    for group in groups:
        choices = sorted(f.stem for f in (CONFIG_DIR / group).glob("*.yaml"))
        print(f"  {group}: {', '.join(choices)}")
    print("\nComposed config:\n" + OmegaConf.to_yaml(cfg))
