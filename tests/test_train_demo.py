"""`hybrid train-demo` orchestration: stages in order, a fine-tuning stage after its base, what ships."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hybrid.commands import train_demo
from hybrid.config import SHIPPED_CHECKPOINTS


def _finish_recording(work: Path, stage: str) -> None:
    """What a finished `record_<split>` stage leaves: a dataset a resumed run keeps."""
    meta = work / f"tabletop_{stage.removeprefix('record_')}" / "meta"
    meta.mkdir(parents=True)
    (meta / "info.json").write_text("{}")


def test_fine_tuning_stage_waits_for_its_base_and_only_shipped_stages_are_copied(tmp_path, monkeypatch):
    calls, finished = [], set()
    lock = threading.Lock()

    def fake_stage(name, args, log_dir):
        if name.startswith("record"):
            (tmp_path / "work" / f"tabletop_{name.removeprefix('record_')}" / "meta").mkdir(parents=True)
        else:
            (tmp_path / "work" / "runs" / name / "model").mkdir(parents=True, exist_ok=True)
            (tmp_path / "work" / "runs" / name / "model" / "weights").write_text(name)
        with lock:
            calls.append((name, args, set(finished)))
            finished.add(name)
        return 1.0

    cfg = train_demo.compose("train_demo", [f"work_dir={tmp_path / 'work'}", f"out={tmp_path / 'ship'}"])
    cfg.trainings = OmegaConf.create({
        "base": {"args": ["planner=tabletop"], "ship": None},
        "other": {"args": ["executor=tabletop"], "ship": "model"},
        "tuned": {"args": ["planner=tabletop"], "ship": ".", "init_from": "base", "data": "heldout"},
        "both": {"args": ["executor=affordance"], "ship": None, "init_from": "other", "data": ["train", "heldout"]},
        "dagger": {"args": ["executor=tabletop"], "ship": None, "init_from": "other", "data": ["train", "rollouts"]},
        "asked": {"args": ["planner=tabletop"], "ship": ".", "init_from": "tuned", "on_policy": ["situations"]},
        "rendered": {"args": ["executor=in_hand"], "ship": None, "data": None},
    })
    # a recording of the `other` stage's executor with the expert taking over: made once that stage is done
    OmegaConf.set_struct(cfg, False)
    cfg.record.rollouts = {"args": ["task=all", "takeover.enabled=true"], "executor": "other"}
    # what the planner of `tuned` is asked in the rollouts of the agent of three stages (one not shipped)
    cfg.record.situations = {"args": ["task=sort", "planner_rollouts.enabled=true"], "planner": "tuned",
                             "world_model": "base", "executor": "dagger"}
    monkeypatch.setattr(train_demo, "_stage", fake_stage)
    monkeypatch.setattr(train_demo, "compose", lambda name, argv: cfg)
    assert train_demo.main([]) == 0
    by_name = {name: (args, done_before) for name, args, done_before in calls}
    tuned_args, done_before_tuned = by_name["tuned"]
    assert "base" in done_before_tuned  # started only once its base had finished
    assert f"init={tmp_path / 'work' / 'runs' / 'base'}" in tuned_args
    assert not any(a.startswith("init=") for a in by_name["other"][0])
    assert f"data={tmp_path / 'work' / 'tabletop_heldout'}" in tuned_args  # a stage may name its recording
    assert f"data={tmp_path / 'work' / 'tabletop_train'}" in by_name["other"][0]
    work = tmp_path / "work"
    assert f"data=[{work / 'tabletop_train'},{work / 'tabletop_heldout'}]" in by_name["both"][0]  # or several
    assert sorted(p.name for p in (tmp_path / "ship").iterdir()) == ["asked", "other", "tuned"]  # not the base
    kept = OmegaConf.load(tmp_path / "work" / "train_demo.yaml")  # the run's timings and the recipe that made it
    assert kept.summary.minutes.tuned == pytest.approx(1 / 60, abs=0.05) and "tuned" in kept.config.trainings
    rollouts_args, done_before_rollouts = by_name["record_rollouts"]
    assert "other" in done_before_rollouts and "dagger" not in done_before_rollouts
    assert f"takeover.executor.path={work / 'runs' / 'other' / 'model'}" in rollouts_args
    assert f"data=[{work / 'tabletop_train'},{work / 'tabletop_rollouts'}]" in by_name["dagger"][0]
    assert [name for name, *_ in calls].count("record_rollouts") == 1
    situations_args, done_before_situations = by_name["record_situations"]
    assert {"tuned", "base", "dagger"} <= done_before_situations and "asked" not in done_before_situations
    # each trainer's model where it writes it: an executor's in `model/`, shipped or not; a planner's in its run
    assert {f"planner_rollouts.planner.model={work / 'runs' / 'tuned'}",
            f"planner_rollouts.world_model.path={work / 'runs' / 'base'}",
            f"planner_rollouts.executor.path={work / 'runs' / 'dagger' / 'model'}"} <= set(situations_args)
    assert f"on_policy=[{work / 'tabletop_situations'}]" in by_name["asked"][0]
    assert f"data={work / 'tabletop_train'}" in by_name["asked"][0]
    assert "record_train" in by_name["other"][1] and "record_heldout" in by_name["tuned"][1]  # recorded first
    rendered = by_name["rendered"][0]  # a stage with `data: null` is given none
    assert not any(a.startswith("data=") for a in rendered) and rendered[-2:] == [f"out={work / 'runs' / 'rendered'}",
                                                                                    "resume=true"]
    assert not any(a.startswith("seed=") for name, args, _ in calls if not name.startswith("record")
                   for a in args)  # each stage its own seed


def test_one_seed_for_every_training_stage(tmp_path, monkeypatch):
    calls = []

    def fake_stage(name, args, log_dir):
        if name.startswith("record"):
            (tmp_path / "work" / f"tabletop_{name.removeprefix('record_')}" / "meta").mkdir(parents=True)
        calls.append((name, args))
        return 1.0

    cfg = train_demo.compose("train_demo", [f"work_dir={tmp_path / 'work'}", f"out={tmp_path / 'ship'}", "seed=3"])
    cfg.trainings = OmegaConf.create({"a": {"args": ["planner=tabletop"], "ship": None},
                                      "b": {"args": ["executor=in_hand"], "ship": None, "data": None}})
    monkeypatch.setattr(train_demo, "_stage", fake_stage)
    monkeypatch.setattr(train_demo, "compose", lambda name, argv: cfg)
    assert train_demo.main([]) == 0
    assert all(args[-1] == "seed=3" for name, args in calls if not name.startswith("record"))
    assert not any("seed=3" in args for name, args in calls if name.startswith("record"))  # the same recordings


def test_a_resumed_run_adds_its_minutes_to_the_saved_ones(tmp_path, monkeypatch):
    took = {"record_train": 600.0, "a": 1200.0}  # the first run's seconds; a resumed one skips the recording

    def fake_stage(name, args, log_dir):
        if name.startswith("record"):
            _finish_recording(tmp_path / "work", name)
        return took.pop(name, 6.0)  # a finished trainer resumes and stops at once

    cfg = train_demo.compose("train_demo", [f"work_dir={tmp_path / 'work'}", f"out={tmp_path / 'ship'}"])
    cfg.record = OmegaConf.create({"train": ["task=all", "episodes=2"]})
    cfg.trainings = OmegaConf.create({"a": {"args": ["planner=tabletop"], "ship": None}})
    monkeypatch.setattr(train_demo, "_stage", fake_stage)
    monkeypatch.setattr(train_demo, "compose", lambda name, argv: cfg)
    assert train_demo.main([]) == 0 and train_demo.main([]) == 0
    summary = OmegaConf.load(tmp_path / "work" / "train_demo.yaml").summary
    assert summary.runs == 2
    assert summary.minutes.record_train == 10.0 and summary.minutes.a == 20.1  # 20 + 0.1 of the resumed run


def test_baselines_are_trained_after_the_tiers_and_only_when_asked(tmp_path, monkeypatch):
    calls = []

    def fake_stage(name, args, log_dir):
        if name.startswith("record"):
            _finish_recording(tmp_path / "work", name)
        (tmp_path / "work" / "runs" / name / "model").mkdir(parents=True, exist_ok=True)
        calls.append(name)
        return 60.0

    cfg = train_demo.compose("train_demo", ["recipe=fast", f"work_dir={tmp_path / 'work'}", f"out={tmp_path / 'ship'}"])
    cfg.record = OmegaConf.create({"train": ["task=all", "episodes=2"]})
    cfg.trainings = OmegaConf.create({"tier": {"args": ["executor=tabletop"], "ship": "model"}})
    cfg.baseline_trainings = OmegaConf.create({"flat": {"args": ["executor=flat"], "ship": "model"}})
    cfg.parallel = 1  # one worker: the stages finish in the pool's order (two would race to append)
    monkeypatch.setattr(train_demo, "_stage", fake_stage)
    monkeypatch.setattr(train_demo, "compose", lambda name, argv: cfg)
    assert train_demo.main([]) == 0
    assert calls == ["record_train", "tier"] and sorted(p.name for p in (tmp_path / "ship").iterdir()) == ["tier"]
    cfg.baselines = True  # the same work_dir again: the tier resumes, the baseline is trained and shipped beside it
    assert train_demo.main([]) == 0
    assert calls[2:] == ["tier", "flat"] and sorted(p.name for p in (tmp_path / "ship").iterdir()) == ["flat", "tier"]
    assert OmegaConf.load(tmp_path / "work" / "train_demo.yaml").summary.minutes.flat == 1.0


@pytest.mark.parametrize("recipe", ["full", "fast"])
def test_each_recipe_names_only_earlier_stages_and_its_own_recordings(recipe):
    cfg = train_demo.compose("train_demo", [f"recipe={recipe}", "baselines=true"])
    stages = train_demo._stages(cfg)
    shipped = {name for name, spec in stages.items() if spec.get("ship") is not None}
    assert {"planner", "world_model", "executor", "executor_flat", "in_hand", "held_colour"} <= shipped  # what loads
    # only the full recipe writes over the shipped checkpoints
    assert (Path(cfg.out).resolve() == SHIPPED_CHECKPOINTS) == (recipe == "full")
    names = list(stages)
    for i, (name, spec) in enumerate(stages.items()):
        if spec.get("init_from"):
            assert spec.init_from in names[:i], name  # listed before, or the pool could wait on itself
        recordings = spec.get("data", "train")  # null: a stage that renders its own data (the in-hand offset)
        recordings = [] if recordings is None else [recordings] if isinstance(recordings, str) else recordings
        assert set(recordings) <= set(cfg.record), name
    for split, spec in cfg.record.items():  # a rollout recording names the stages whose tiers it rolls out
        if OmegaConf.is_list(spec):
            continue
        if spec.get("planner"):  # the whole agent's, its planner's questions written down
            assert {spec.planner, spec.world_model, spec.executor} <= set(names), split
            assert "planner_rollouts.enabled=true" in spec.args, split
        else:  # an executor's, with the expert taking over
            assert spec.executor in names and "takeover.enabled=true" in spec.args, split
    for name, spec in cfg.trainings.items():  # on-policy recordings come from earlier stages than the one using them
        for split in spec.get("on_policy") or []:
            assert cfg.record[split].planner in names[:names.index(name)], name


def test_a_stage_log_keeps_every_run_of_the_stage(tmp_path):
    # a resumed run appends: the first run's training log is what says how that stage went
    train_demo._stage("cli", ["--help"], tmp_path)
    train_demo._stage("cli", ["--help"], tmp_path)
    log = (tmp_path / "cli.log").read_text()
    assert log.count("=== ") == 2 and log.count("usage: hybrid") == 2
