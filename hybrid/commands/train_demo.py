"""`hybrid train-demo [recipe=full|fast] [overrides]`: record the tabletop data, train every tabletop tier, write
the checkpoints to `out` (the full recipe's: the shipped ones; `hybrid demo checkpoints=DIR` / `hybrid eval ...` load
any other).

Each stage is a `hybrid record` / `hybrid train` run of its own (a subprocess with one CPU thread, a few
in parallel), so the pipeline is exactly what a user would type, and a stage that fails names its log.
Re-running resumes: a recorded dataset is kept, and trainers resume from their last checkpoint.
The minutes per stage and the composed recipe are written to `<work_dir>/train_demo.yaml` when a run finishes; a
resumed run adds its minutes to the ones there (an interrupted run writes none, so its minutes are not counted).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hybrid.config import compose, print_config_help, wants_help


def _stage(name: str, args: list[str], log_dir: Path) -> float:
    """Run `hybrid <args>` with one CPU thread; its output is appended to ``log_dir/<name>.log`` (a resumed run's
    after the first's, which stays). Returns seconds."""
    log = log_dir / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    print(f"[{name}] hybrid {' '.join(args)}  (log: {log})", flush=True)
    with open(log, "a") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} hybrid {' '.join(args)}\n")
        f.flush()  # before the child's output, which goes to the same file
        code = subprocess.run([sys.executable, "-m", "hybrid.cli", *args], check=False, stdout=f,
                              stderr=subprocess.STDOUT, env=env).returncode
    if code:
        raise RuntimeError(f"stage {name} failed with exit code {code}; see {log}")
    took = time.perf_counter() - start
    print(f"[{name}] done in {took / 60:.1f} min", flush=True)
    return took


def main(argv: list[str]) -> int:
    if wants_help(argv):
        print(__doc__)
        print_config_help("train_demo", argv)
        return 0
    cfg = compose("train_demo", argv)
    trainings = _stages(cfg)
    work = Path(cfg.work_dir).resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    began = time.perf_counter()

    data = {split: work / f"tabletop_{split}" for split in cfg.record}
    runs = {name: work / "runs" / name for name in trainings}
    recording_lock = threading.Lock()

    def model_of(stage: str) -> Path:
        """Where a stage's trained model is, once it has finished: the executors' trainers write it to `model/`
        in their run directory, the planner's and the world model's to the run directory itself."""
        futures[stage].result()
        trainer = str(trainings[stage].args[0]).split("=")[0]
        return runs[stage] / "model" if trainer == "executor" else runs[stage]

    def stages_of(split: str) -> list[str]:
        """The stages whose models a rollout recording rolls out (none for the expert's own recordings)."""
        spec = cfg.record[split]
        if OmegaConf.is_list(spec):
            return []
        return [spec[k] for k in ("planner", "world_model", "executor") if spec.get(k)]

    def record(split: str) -> None:
        """Record ``split`` unless it is there. A recording given as ``{args, executor: <stage>}`` rolls that
        stage's executor out with the expert taking over (`hybrid record takeover.enabled=true`); one that also
        names ``planner`` and ``world_model`` stages rolls out the agent of the three and writes what its planner
        is asked (`planner_rollouts.enabled=true`). It waits for them."""
        spec = cfg.record[split]
        args = list(spec) if OmegaConf.is_list(spec) else list(spec.args)
        if (data[split] / "meta" / "info.json").is_file():
            return
        if not OmegaConf.is_list(spec) and spec.get("planner"):
            args += [f"planner_rollouts.planner.model={model_of(spec.planner)}",
                     f"planner_rollouts.world_model.path={model_of(spec.world_model)}",
                     f"planner_rollouts.executor.path={model_of(spec.executor)}"]
        elif not OmegaConf.is_list(spec):
            args.append(f"takeover.executor.path={model_of(spec.executor)}")
        shutil.rmtree(data[split], ignore_errors=True)
        timings[f"record_{split}"] = _stage(f"record_{split}", ["record", "env=tabletop", *args,
                                                                 f"out={data[split]}", "progress=false"], logs)

    def train(name: str) -> float:
        spec = trainings[name]
        recording = spec.get("data", "train")  # which recording(s) it trains on; null: none (it renders its own)
        recordings = list(recording) if OmegaConf.is_list(recording) else [] if recording is None else [recording]
        on_policy = list(spec.get("on_policy") or [])  # a planner's own situations (planner_rollouts recordings)
        for split in recordings + on_policy:  # a rollout recording's stages first, outside the lock: one of
            for stage in stages_of(split):    # them may itself be waiting for the lock
                futures[stage].result()
            if split in expert:  # the expert's own recordings are jobs of the pool (below)
                expert[split].result()
        with recording_lock:  # one stage records a rollout recording, the others wait for it
            for split in recordings + on_policy:
                record(split)
        where = [f"data=[{','.join(str(data[r]) for r in recordings)}]"] if OmegaConf.is_list(recording) else \
            [f"data={data[r]}" for r in recordings]  # one recording, or none
        args = ["train", *spec.args, *where, f"out={runs[name]}", "resume=true"]
        if cfg.get("seed") is not None:
            args.append(f"seed={int(cfg.seed)}")
        if on_policy:
            args.append(f"on_policy=[{','.join(str(data[r]) for r in on_policy)}]")
        if spec.get("init_from"):  # a fine-tuning stage starts from another stage's result
            futures[spec.init_from].result()
            args.append(f"init={runs[spec.init_from]}")
        return _stage(name, args, logs)

    # The expert's recordings first, as jobs of the pool beside each other and beside the stages that need none;
    # then the stages in the order listed: one that fine-tunes another (listed before it) or trains on a recording
    # waits for it (submitted earlier, so it runs or has run: the pool cannot wait on itself). Rollout recordings
    # are made once the stages they roll out are done.
    with ThreadPoolExecutor(max_workers=int(cfg.parallel)) as pool:
        futures = {}
        expert = {split: pool.submit(record, split) for split, spec in cfg.record.items() if OmegaConf.is_list(spec)}
        for name in trainings:
            futures[name] = pool.submit(train, name)
        for future in expert.values():
            future.result()
        for name, future in futures.items():
            timings[name] = future.result()

    out = Path(cfg.out)
    ignore = shutil.ignore_patterns(*cfg.exclude)
    for name, spec in trainings.items():
        if spec.get("ship") is None:  # an intermediate stage (e.g. the base a fine-tuning starts from)
            continue
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.copytree(runs[name] / spec.ship, out / name, ignore=ignore)
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    summary = {"minutes": {k: round(v / 60, 1) for k, v in timings.items()},
               "total_minutes": round((time.perf_counter() - began) / 60, 1),
               "shipped": str(out), "size_mb": round(size_mb, 1),
               "use": f"hybrid demo checkpoints={out}; hybrid eval checkpoints={out} ..."}
    print(OmegaConf.to_yaml(summary))
    # Kept beside the run's data with the composed recipe, so that a second run compares against what made this one.
    saved = work / "train_demo.yaml"
    OmegaConf.save({"summary": _add_earlier_runs(summary, saved), "config": cfg}, saved)
    return 0


def _stages(cfg: DictConfig) -> DictConfig:
    """The training stages this run trains, in the pool's order: the recipe's `trainings` (the agent's tiers), then,
    with `baselines=true`, its `baseline_trainings` (models the evaluation compares against, which the agent never loads)."""
    if not cfg.baselines or not cfg.get("baseline_trainings"):
        return cfg.trainings
    return OmegaConf.create({**cfg.trainings, **cfg.baseline_trainings})


def _add_earlier_runs(summary: dict, saved: Path) -> dict:
    """``summary`` with the minutes of the runs that built the work_dir before this one added: a resumed run
    skips what is done (a kept recording takes no time, a finished trainer seconds), so its own minutes alone
    would overwrite what the work_dir really took."""
    if not saved.is_file():
        return {**summary, "runs": 1}
    before = OmegaConf.to_container(OmegaConf.load(saved)).get("summary", {})
    minutes = dict(before.get("minutes", {}))
    for stage, took in summary["minutes"].items():
        minutes[stage] = round(minutes.get(stage, 0.0) + took, 1)
    return {**summary, "minutes": minutes, "runs": before.get("runs", 1) + 1,
            "total_minutes": round(before.get("total_minutes", 0.0) + summary["total_minutes"], 1)}
