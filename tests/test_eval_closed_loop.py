"""`hybrid eval` runs every agent on the same held-out seeds and reports success per family."""

import json

import pytest

from hybrid.cli import main
from hybrid.eval.closed_loop import wilson_interval
from hybrid.eval.compare import mcnemar_exact

DOUBLES = ["planner@tiers.planner=mock", "world_model@tiers.world_model=mock", "executor@tiers.executor=mock",
           "executor@tiers.flat=mock", "families=[pick_place]", "loop.max_steps=12"]


def test_eval_reports_every_agent_per_family(capsys):
    assert main(["eval", "--episodes", "1", "--json", *DOUBLES]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["agents"]) == {"oracle", "hierarchical", "oracle_subgoals", "language_only", "flat"}
    for agent in report["agents"].values():
        fam = agent["families"]["pick_place"]
        assert fam["success"] == 0.0  # zero actions never solve a task
        assert fam["success_ci95"] == [0.0, 0.793]  # Wilson's interval of 0 in 1
        # the tabletop's placement probe: nothing was picked up, so nothing was released
        assert fam["releases_per_episode"] == 0 and fam["release_error_cm_p50"] is None
        # and its grounding probe: what each agent's subtasks asked for, against the scene
        assert {"subtasks_per_episode", "ungrounded_subtasks", "off_task_subtasks", "steps_on_ungrounded"} <= set(fam)
        assert "executor" in agent["latency_ms_p50"]
    assert "world_model" in report["agents"]["oracle_subgoals"]["latency_ms_p50"]
    for oracle in ("oracle", "oracle_subgoals"):
        assert report["agents"][oracle]["families"]["pick_place"]["faults"] == 0  # bound to each episode
    assert "world_model" not in report["agents"]["language_only"]["latency_ms_p50"]


def test_eval_trace_records_each_episode_subtask_changes_and_ending(tmp_path, capsys):
    trace = tmp_path / "trace.jsonl"
    args = ["eval", "--episodes", "2", "--json", *DOUBLES, "~agents.oracle_subgoals", "~agents.language_only",
            "~agents.flat", "~agents.hierarchical", f"trace={trace}"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["agents"]["oracle"]["families"]["pick_place"]["ended"] == {"budget": 2}  # zero actions: out of steps
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [e["event"] for e in events if e["event"] != "subtask"] == ["start", "end", "start", "end"]
    assert [e["seed"] for e in events if e["event"] == "start"] == [500000, 500001]
    start, first = events[0], events[1]
    assert start["agent"] == "oracle" and start["family"] == "pick_place" and len(start["plan"]) == 1
    # the oracle names the plan's subtask; the tabletop describes the scene at that moment
    assert first["event"] == "subtask" and first["index"] == 0 and first["subtask"]
    assert {"colour", "xyz_cm", "held", "in_bowl", "on"} <= set(first["state"]["blocks"][0])
    end = next(e for e in events if e["event"] == "end")
    assert end["status"] == "budget" and end["success"] is False and end["subtask_success"] == [False]
    # a second evaluation to the same file replaces it: one file, one evaluation
    assert main(args[:2] + ["1"] + args[3:]) == 0
    assert [json.loads(line)["event"] for line in trace.read_text().splitlines()].count("start") == 1


def test_oracle_world_model_renders_the_sims_subgoal():
    import numpy as np

    from hybrid.envs.tabletop import TabletopEnv
    from hybrid.eval.tiers import OracleWorldModel
    from hybrid.runtime.env_adapter import EnvAdapter
    from hybrid.types import Subtask

    env = TabletopEnv(task="pick_place")
    try:
        raw, info = env.reset(seed=3)
        obs = EnvAdapter(env).observation(raw)
        oracle = OracleWorldModel()
        oracle.bind(env, info["subtasks"])
        goal = oracle.imagine(obs, Subtask(text=info["subtasks"][0], index=0))
        expected = env.render_subgoal(0)
        assert set(goal.images) == set(obs.images)
        assert all(np.array_equal(goal.images[c], expected[c]) for c in obs.images)
        assert not np.array_equal(goal.images["front"], obs.images["front"])  # the block has moved
    finally:
        env.close()


def test_oracle_planner_names_the_first_subtask_the_physics_says_is_unfinished():
    from hybrid.envs.tabletop import TabletopEnv
    from hybrid.eval.tiers import OraclePlanner
    from hybrid.runtime.env_adapter import EnvAdapter

    env = TabletopEnv(task="gather")
    try:
        raw, info = env.reset(seed=1)
        planner, expert, adapter = OraclePlanner(), env.expert(), EnvAdapter(env)
        planner.bind(env, info["subtasks"])
        said = []
        for _ in range(400):
            step = planner.plan(adapter.observation(raw), info["instruction"], [])
            said.append("done" if step.done else step.subtask)
            if step.done:
                break
            raw, _, _, _, info = env.step(expert.act(raw))
        assert list(dict.fromkeys(said)) == [*info["subtasks"], "done"]  # each subtask in order, then done
    finally:
        env.close()


def test_oracles_word_subtasks_as_the_trained_planner_does():
    import numpy as np

    from hybrid.envs.tabletop import TabletopEnv
    from hybrid.eval.tiers import OraclePlanner, OracleWorldModel
    from hybrid.runtime.env_adapter import EnvAdapter
    from hybrid.types import Subtask
    from planners.subtask.tabletop_language import canonical_subtask

    phrasing = "planners.subtask.tabletop_language.canonical_subtask"
    env = TabletopEnv(task="sort", split="heldout")
    try:
        raw, info = env.reset(seed=0)
        plan = info["subtasks"]
        canonical = [canonical_subtask(s) for s in plan]
        assert canonical != plan  # held-out paraphrases
        obs = EnvAdapter(env).observation(raw)
        planner, world_model = OraclePlanner(phrasing), OracleWorldModel(phrasing)
        planner.bind(env, plan)
        world_model.bind(env, plan)
        assert planner.plan(obs, info["instruction"], []).subtask == canonical[0]
        # The planner's canonical wording of the second subtask, at the history position of the first.
        goal = world_model.imagine(obs, Subtask(text=canonical[1], index=0))
        assert np.array_equal(goal.images["front"], env.render_subgoal(1)["front"])
    finally:
        env.close()


def test_eval_compare_pairs_two_traces_seed_by_seed(tmp_path, capsys):
    def trace(path, outcomes):
        lines = [json.dumps({"event": "start", "agent": "hierarchical", "family": "sort", "seed": s})
                 for s in outcomes]
        lines += [json.dumps({"event": "end", "agent": "hierarchical", "family": "sort", "seed": s, "success": ok,
                              "status": "success" if ok else status}) for s, (ok, status) in outcomes.items()]
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    a = trace(tmp_path / "a.jsonl", {1: (True, ""), 2: (False, "done"), 3: (False, "terminated"), 4: (True, "")})
    b = trace(tmp_path / "b.jsonl", {1: (False, "terminated"), 2: (True, ""), 3: (True, ""), 5: (True, "")})
    assert main(["eval", "compare", "--json", a, b]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["episodes"] == 3  # seeds 4 and 5 are in one trace only
    assert (row["success_a"], row["success_b"]) == (round(1 / 3, 3), round(2 / 3, 3))
    assert row["only_a"] == {"1": "terminated"} and row["only_b"] == {"2": "done", "3": "terminated"}
    assert row["p_value"] == 1.0  # 1 seed won against 2 lost is no evidence either way
    assert main(["eval", "compare", a, str(tmp_path / "a.jsonl")]) == 0
    capsys.readouterr()
    # no common (agent, family), a line that is no trace event, a missing file: said clearly, no traceback
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"event": "end", "agent": "flat", "family": "sort", "seed": 1, "success": True,
                                 "status": "success"}) + "\n")
    assert main(["eval", "compare", a, str(other)]) == 1
    assert "no agent and family with common seeds" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text((tmp_path / "a.jsonl").read_text() + '{"event": "end", "agent": "flat"}\nnot json\n')
    assert main(["eval", "compare", a, str(broken)]) == 2
    assert f"{broken}:9: not a `hybrid eval ... trace=FILE` event" in capsys.readouterr().err
    assert main(["eval", "compare", a, str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_eval_takes_overrides_before_any_option(capsys):
    assert main(["eval", "families=[pick_place]", *DOUBLES[:4], "loop.max_steps=4", "~agents.oracle_subgoals",
                 "~agents.language_only", "~agents.flat", "~agents.hierarchical", "episodes=1"]) == 0
    assert "oracle" in capsys.readouterr().out


def test_success_statistics_match_their_textbook_values():
    # McNemar's exact test is a two-sided sign test on the seeds only one run solved
    assert mcnemar_exact(10, 1) == 2 * 12 / 2**11
    assert mcnemar_exact(3, 7) == mcnemar_exact(7, 3) == 0.34375
    assert mcnemar_exact(0, 0) == mcnemar_exact(4, 4) == 1.0
    # Wilson's score interval: 35 of 50 successes, none, all, and no episode at all
    assert wilson_interval(35, 50) == [0.562, 0.809]
    assert wilson_interval(0, 50) == [0.0, 0.071] and wilson_interval(50, 50) == [0.929, 1.0]
    assert wilson_interval(0, 0) == [0.0, 1.0]


def test_eval_stops_before_any_episode_when_an_agents_checkpoint_is_missing(tmp_path):
    # a `hybrid train-demo recipe=fast` run without `baselines=true` ships no flat baseline
    args = ["eval", "--episodes", "1", *DOUBLES[:3], "executor@tiers.flat=flow_flat", "families=[pick_place]",
            f"checkpoints={tmp_path / 'ship'}", f"trace={tmp_path / 'trace.jsonl'}"]
    with pytest.raises(RuntimeError, match=r"agent 'flat': its executor cannot be built(.|\n)*'~agents.flat'"):
        main(args)
    assert not (tmp_path / "trace.jsonl").exists()  # the agents before it ran no episode
