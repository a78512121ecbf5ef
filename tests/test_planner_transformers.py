"""The transformers backend and the tabletop trainer on a real tiny Qwen2-VL built and trained here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybrid.data import open_dataset
from hybrid.testing.datasets import PLAN, make_tiny_dataset
from hybrid.types import Observation, PlanStep, Subtask

TINY = dict(image_size=56, vocab_size=400, hidden_size=64, layers=2, heads=2, kv_heads=1, intermediate_size=128,
            vision_dim=32, vision_depth=1, vision_heads=2)
INSTRUCTION = "put the red block in the blue bowl"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("planner") / "data", episodes=2, frames_per_subtask=4)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A tiny planner trained to fit the tiny dataset (a few seconds on a CPU)."""
    from planners.subtask.train import train

    out = tmp_path_factory.mktemp("planner") / "model"
    train(str(tiny_data.root), str(out), steps=120, batch_size=8, lr=3e-3, warmup_steps=10,
          checkpoint_every=60, threads=1, model=TINY, done_tail_s=0.1)
    return out


def obs_of(image):
    return Observation(images={"front": image}, state=np.zeros(2, np.float32))


def test_random_tiny_vlm_saves_and_reloads_through_the_auto_classes(tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2VLForConditionalGeneration

    from planners.subtask.prompting import PromptConfig, build_messages
    from planners.subtask.tabletop_model import TabletopModelConfig, build, save
    from planners.subtask.transformers_backend import TransformersBackend

    model, processor = build(["put the red block in the blue bowl", '{"done": true}'] * 5,
                             TabletopModelConfig(**TINY))
    save(model, processor, tmp_path)
    assert isinstance(AutoModelForImageTextToText.from_pretrained(tmp_path), Qwen2VLForConditionalGeneration)
    assert type(AutoProcessor.from_pretrained(tmp_path)).__name__ == "Qwen2VLProcessor"

    backend = TransformersBackend(tmp_path, max_new_tokens=8)
    messages = build_messages(PromptConfig(system=None, schema_in_prompt=False), INSTRUCTION, [], None)
    image = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    inputs = backend.inputs(messages, [image])
    # 56x56, patch 14, merge 2: 16 patches, 4 image tokens.
    assert inputs["pixel_values"].shape[0] == 16
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 4
    with torch.inference_mode():
        ref = model.eval().generate(**processor(text=[processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False)], images=[image], return_tensors="pt"),
            max_new_tokens=8, do_sample=False)
    assert backend.complete(messages, image) == processor.batch_decode(ref[:, inputs["input_ids"].shape[1]:],
                                                                      skip_special_tokens=True)[0]


def test_a_missing_local_model_directory_is_named(tmp_path):
    from planners.subtask.transformers_backend import transformers_planner

    with pytest.raises(FileNotFoundError, match="planner model directory not found"):
        transformers_planner(str(tmp_path / "no_such_run" / "planner"))


def test_constrained_decoding_keeps_even_a_random_model_inside_the_vocabulary(tmp_path):
    from planners.subtask.planner import PlannerFault
    from planners.subtask.tabletop_model import TabletopModelConfig, build, save
    from planners.subtask.transformers_backend import transformers_planner

    vocab = ["put the red block in the blue bowl", "put the blue block on the red block"]
    model, processor = build([INSTRUCTION, '{"subtask": "", "done": false}', *vocab] * 5, TabletopModelConfig(**TINY))
    save(model, processor, tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    prompt = {"system": None, "schema_in_prompt": False, "image_size": 56}
    free = transformers_planner(str(tmp_path), vocabulary=vocab, prompt=prompt, constrained=False, max_attempts=1)
    with pytest.raises(PlannerFault):  # random weights emit no valid reply on their own
        free.plan(obs_of(image), INSTRUCTION, [])
    constrained = transformers_planner(str(tmp_path), vocabulary=vocab, prompt=prompt, max_attempts=1)
    step = constrained.plan(obs_of(image), INSTRUCTION, [])
    assert step.done or step.subtask in vocab


@pytest.mark.slow
def test_trained_planner_round_trips_and_looks_at_the_image(trained, tiny_data):
    from planners.subtask.frames import decode_frames
    from planners.subtask.transformers_backend import transformers_planner

    settings = json.loads((trained / "planner.json").read_text())
    assert set(PLAN) <= set(settings["vocabulary"]) and settings["prompt"]["image_size"] == 56
    planner = transformers_planner(str(trained))
    frames = decode_frames(open_dataset(tiny_data.root), "observation.images.front", 56)
    # Episode 0: frames 0-3 pick up, 4-7 put in the bowl (each subtask's last frame counts as finished).
    assert planner.plan(obs_of(frames[0]), INSTRUCTION, []) == PlanStep(subtask=PLAN[0])
    assert planner.current == PLAN[0]
    # Later frames, with the first subtask reported done: a valid step from the vocabulary.
    planner.reset()
    last = planner.plan(obs_of(frames[7]), INSTRUCTION, [Subtask(text=PLAN[0], index=0, status="done")])
    assert last.done or last.subtask in PLAN


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint(trained, tiny_data):
    from planners.subtask.train import STATE_DIR, train

    assert json.loads((trained / STATE_DIR / "step.json").read_text()) == {"step": 120}
    # Asking for more steps continues from step 120 with the saved tokenizer and optimizer.
    train(str(tiny_data.root), str(trained), steps=130, batch_size=4, lr=3e-3, warmup_steps=10,
          checkpoint_every=60, threads=1, model=TINY)
    assert json.loads((trained / STATE_DIR / "step.json").read_text()) == {"step": 130}


def test_eval_reads_the_planner_of_a_checkpoint_set(trained, tiny_data, capsys, tmp_path):
    from planners.subtask import evaluate

    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "planner").symlink_to(trained, target_is_directory=True)  # as `hybrid train-demo out=` lays out
    assert evaluate.main(["--data", str(tiny_data.root), "--checkpoints", str(tmp_path / "set"), "--examples", "3",
                          "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"] == str(tmp_path / "set" / "planner")


@pytest.mark.slow
def test_eval_and_bench_print_their_json(trained, tiny_data, capsys, tmp_path, monkeypatch):
    from planners.subtask import bench, evaluate

    errors = tmp_path / "errors.jsonl"
    assert evaluate.main(["--data", str(tiny_data.root), "--model", str(trained), "--examples", "9", "--json",
                          "--errors", str(errors)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= result["next_subtask_accuracy"] <= 1.0 and result["next_examples"] + result["done_examples"] > 0
    # one line per wrong reply: as many as the scores miss
    wrong = [json.loads(line) for line in errors.read_text().splitlines()]
    missed = round(result["next_examples"] * (1 - result["next_subtask_accuracy"])) + \
        round(result["done_examples"] * (1 - result["done_accuracy"]))
    assert len(wrong) == missed
    assert all(w["reply"] != w["target"] and w["situation"] in ("current", "fresh", "behind") for w in wrong)
    by_situation = result["next_subtask_accuracy_by_situation"]
    assert set(by_situation) == {"current", "fresh", "behind"} and all(0 <= a <= 1 for a in by_situation.values())
    assert set(result["next_subtask_accuracy_by_family"]) <= {"pick_place", "gather", "stack", "sort", "other"}
    assert 0.0 <= result["next_subtask_accuracy_as_planned"] <= result["next_subtask_accuracy"]
    # a planner that always says "done": every unfinished episode's question is a premature "done"
    monkeypatch.setattr(evaluate, "ask", lambda *args: (PlanStep(done=True), 1.0))
    assert evaluate.main(["--data", str(tiny_data.root), "--model", str(trained), "--examples", "9", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["premature_done"] == 1.0 and result["done_recall"] == 1.0 and result["next_subtask_accuracy"] == 0.0
    assert result["premature_done_after_release"] in (0.0, 1.0)  # 0.0 where no question followed a release
    assert bench.main(["--config", "tabletop", "--model", str(trained), "--calls", "3", "--warmup", "1",
                       "--size", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["latency_ms_p50"] > 0 and result["calls"] == 3 and result["faults"] == 0


@pytest.mark.slow
def test_fine_tuning_to_count_gripper_releases_keeps_the_setting_with_the_model(trained, tiny_data, tmp_path, capsys):
    from planners.subtask import evaluate
    from planners.subtask.train import train
    from planners.subtask.transformers_backend import transformers_planner

    out = tmp_path / "gripper"
    train(str(tiny_data.root), str(out), steps=4, batch_size=4, lr=1e-3, warmup_steps=1, threads=1,
          init=str(trained), gripper_index=-1, release_noise=0.5, model=TINY)
    assert json.loads((out / "planner.json").read_text())["prompt"]["gripper_index"] == -1
    planner = transformers_planner(str(out))
    step = planner.plan(obs_of(np.zeros((56, 56, 3), np.uint8)), INSTRUCTION, [])
    assert step.done or step.subtask in PLAN
    assert evaluate.main(["--data", str(tiny_data.root), "--model", str(out), "--examples", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["next_examples"] > 0


def test_a_planner_naming_blocks_from_the_history_is_trained_and_scored_in_that_language(tmp_path, capsys):
    from planners.subtask import evaluate
    from planners.subtask.train import train

    plan = ["put a red block in the blue bowl", "put the other red block in the blue bowl"]
    data = make_tiny_dataset(tmp_path / "data", episodes=1, frames_per_subtask=4, plan=plan)
    with pytest.raises(ValueError, match="ordinals"):
        train(str(data.root), str(tmp_path / "bad"), steps=1, model=TINY, ordinals="counted")
    out = tmp_path / "history"
    train(str(data.root), str(out), steps=2, batch_size=2, warmup_steps=1, threads=1, model=TINY, ordinals="history")
    settings = json.loads((out / "planner.json").read_text())
    assert settings["ordinals"] == "history"
    assert "put another red block in the blue bowl" in settings["vocabulary"]
    assert not any(s.startswith(("put the other", "put a ")) for s in settings["vocabulary"])
    assert evaluate.main(["--data", str(data.root), "--model", str(out), "--examples", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["next_examples"] > 0


def test_a_planner_trains_on_several_recordings_at_once(tiny_data, tmp_path):
    from planners.subtask.train import train

    other = make_tiny_dataset(tmp_path / "other", episodes=1, frames_per_subtask=4,
                              plan=["put the green block in the yellow bowl"])
    out = tmp_path / "both"
    train([str(tiny_data.root), str(other.root)], str(out), steps=2, batch_size=2, warmup_steps=1, threads=1,
          model=TINY)
    vocabulary = json.loads((out / "planner.json").read_text())["vocabulary"]
    assert "put the green block in the yellow bowl" in vocabulary and set(PLAN) <= set(vocabulary)


def test_fine_tuning_at_a_larger_image_size_reads_the_larger_grid(trained, tiny_data, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor

    from planners.subtask.train import train
    from planners.subtask.transformers_backend import transformers_planner

    out = tmp_path / "larger"
    train(str(tiny_data.root), str(out), steps=2, batch_size=2, warmup_steps=1, threads=1, init=str(trained),
          model={**TINY, "image_size": 112})
    assert json.loads((out / "planner.json").read_text())["prompt"]["image_size"] == 112
    processor = AutoProcessor.from_pretrained(out)
    grid = processor.image_processor(images=[Image.new("RGB", (112, 112))], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 8, 8]]  # 112 px / patch 14 (the init read 56 px: 4 x 4)
    step = transformers_planner(str(out)).plan(obs_of(np.zeros((96, 96, 3), np.uint8)), INSTRUCTION, [])
    assert step.done or step.subtask in PLAN


def test_fine_tuning_with_the_wrist_camera_beside_the_front_one_reads_both(trained, tiny_data, tmp_path, capsys):
    from PIL import Image
    from transformers import AutoProcessor

    from planners.subtask import evaluate
    from planners.subtask.train import train
    from planners.subtask.transformers_backend import transformers_planner

    out = tmp_path / "wrist"
    train(str(tiny_data.root), str(out), steps=2, batch_size=2, warmup_steps=1, threads=1, init=str(trained),
          model=TINY, camera=["front", "wrist"])
    assert json.loads((out / "planner.json").read_text())["prompt"]["camera"] == ["front", "wrist"]
    processor = AutoProcessor.from_pretrained(out)
    grid = processor.image_processor(images=[Image.new("RGB", (112, 56))], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 8]]  # the front camera's 4 x 4 patches, the wrist's 4 x 4 to its right
    planner = transformers_planner(str(out))
    obs = Observation(images={c: np.zeros((96, 96, 3), np.uint8) for c in ("front", "wrist")},
                      state=np.zeros(2, np.float32))
    step = planner.plan(obs, INSTRUCTION, [])
    assert step.done or step.subtask in PLAN
    assert evaluate.main(["--data", str(tiny_data.root), "--model", str(out), "--examples", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["next_examples"] > 0


def test_fine_tuning_with_the_release_camera_shows_the_last_release_after_the_front_camera(
        trained, tiny_data, tmp_path, capsys):
    from dataclasses import replace

    from transformers import AutoProcessor

    from planners.subtask import evaluate
    from planners.subtask.examples import Example
    from planners.subtask.frames import decode_views
    from planners.subtask.prompting import PromptConfig
    from planners.subtask.train import PLACED_QUESTION, collate, example_image, train

    out = tmp_path / "release"
    settings = {"init": str(trained), "model": TINY, "gripper_index": 2, "release_camera": "wrist"}
    for bad, why in (({"release_noise": 0.2}, "release_noise"),
                     ({"on_policy": str(tiny_data.root), "on_policy_fraction": 0.5, "ordinals": "history"},
                      "records no release view")):
        with pytest.raises(ValueError, match=why):
            train(str(tiny_data.root), str(tmp_path / "bad"), steps=1, **settings, **bad)
    train(str(tiny_data.root), str(out), steps=2, batch_size=2, warmup_steps=1, threads=1, **settings)
    prompt = PromptConfig.model_validate(json.loads((out / "planner.json").read_text())["prompt"])
    assert (prompt.release_camera, prompt.gripper_index) == ("wrist", 2)
    grid = AutoProcessor.from_pretrained(out).image_processor(
        images=[np.zeros((56, 112, 3), np.uint8)], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 8]]  # the front camera, then the release view to its right
    dataset = open_dataset(tiny_data.root)
    front, wrist = (decode_views(dataset, [c], 56) for c in ("front", "wrist"))
    ex = Example(frame=5, instruction=INSTRUCTION, done=[], current=PLAN[0], target=PlanStep(subtask=PLAN[0]),
                 accepted=frozenset({PLAN[0]}), releases=1, release_frame=1, release_placed=True)
    image = example_image(ex, front, prompt, wrist, lag=3)
    assert np.array_equal(image[:, :56], front[5]) and np.array_equal(image[:, 56:], wrist[4])
    assert not example_image(replace(ex, releases=0, release_frame=None), front, prompt, wrist)[:, 56:].any()
    # The auxiliary question on that view: did the last release place its block?
    with pytest.raises(ValueError, match="placed_fraction"):
        train(str(tiny_data.root), str(tmp_path / "bad"), steps=1, model=TINY, placed_fraction=0.3)
    processor = AutoProcessor.from_pretrained(out)
    batch = collate(processor, front, [replace(ex, placed=False)], prompt, release_frames=wrist)
    labels = batch["labels"][0]
    assert processor.tokenizer.decode(labels[labels >= 0]) == '{"placed": false}<|im_end|>'
    assert PLACED_QUESTION in processor.tokenizer.decode(batch["input_ids"][0])
    # With placed_in_prompt the prompt says whether that release placed its block (the example's truth, or with
    # placed_noise the opposite); the auxiliary question is asked without it.
    told = prompt.model_copy(update={"placed_in_prompt": True})

    def prompt_of(example, **kw):
        return processor.tokenizer.decode(collate(processor, front, [example], told, release_frames=wrist,
                                                  **kw)["input_ids"][0])

    assert "Placed: yes" in prompt_of(ex)
    assert "Placed: no" in prompt_of(ex, rng=np.random.default_rng(0), placed_noise=1.0)
    assert "Placed:" not in prompt_of(replace(ex, placed=True))
    assert "Placed: no" in prompt_of(replace(ex, release_placed=False))
    assert evaluate.main(["--data", str(tiny_data.root), "--model", str(out), "--examples", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["next_examples"] > 0
    with pytest.raises(SystemExit, match="--on-policy: the recorded situations hold no release view"):
        evaluate.main(["--data", str(tiny_data.root), "--model", str(out), "--on-policy", "--json"])


def test_an_auxiliary_example_asks_what_is_left_and_is_trained_on_that_list(tiny_data, tmp_path):
    from planners.subtask.examples import Example
    from planners.subtask.prompting import PromptConfig
    from planners.subtask.tabletop_model import TabletopModelConfig, build
    from planners.subtask.train import LEFT_QUESTION, collate, left_reply, train

    _, processor = build([INSTRUCTION, LEFT_QUESTION, left_reply(PLAN), *PLAN] * 5, TabletopModelConfig(**TINY))
    frames = np.zeros((1, 56, 56, 3), np.uint8)
    prompt = PromptConfig(system=None, schema_in_prompt=False, image_size=56)
    next_step = Example(0, INSTRUCTION, [], None, PlanStep(subtask=PLAN[0]), frozenset({PLAN[0]}))
    aux = Example(0, INSTRUCTION, [], None, PlanStep(subtask=PLAN[0]), frozenset({PLAN[0]}), left=tuple(PLAN))
    batch = collate(processor, frames, [next_step, aux], prompt)
    texts = processor.batch_decode(batch["input_ids"], skip_special_tokens=False)
    assert LEFT_QUESTION not in texts[0] and LEFT_QUESTION in texts[1]
    labels = [processor.decode(row[row >= 0]) for row in batch["labels"]]
    assert labels == [f'{{"subtask": "{PLAN[0]}", "done": false}}<|im_end|>', left_reply(PLAN) + "<|im_end|>"]
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="left_fraction"):
            train(str(tiny_data.root), str(tmp_path / "bad"), steps=1, model=TINY, left_fraction=bad)
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    out = tmp_path / "left"
    train(str(tiny_data.root), str(out), steps=2, batch_size=4, warmup_steps=1, threads=1, model=TINY,
          left_fraction=0.5)
    assert (out / "model.safetensors").is_file()


def test_the_tokenizer_corpus_has_the_auxiliary_question_only_when_it_is_asked(tiny_data):
    from hybrid.data import SubtaskIndex
    from planners.subtask.prompting import PromptConfig
    from planners.subtask.train import LEFT_QUESTION, tokenizer_corpus

    index, prompt = SubtaskIndex.from_dataset(open_dataset(tiny_data.root)), PromptConfig()
    plain = tokenizer_corpus(index, PLAN, prompt)
    asked = tokenizer_corpus(index, PLAN, prompt, ask_left=True)
    assert LEFT_QUESTION not in plain and LEFT_QUESTION in asked
    assert asked[: len(plain)] == plain  # the tokenizer of a planner trained without it is unchanged


def random_planner(tmp_path, vocab: list[str], candidates: int, seed: int):
    """A random tiny tabletop planner over ``vocab``, saved and loaded back, and a random 56-px image."""
    from planners.subtask.tabletop_model import TabletopModelConfig, build, save
    from planners.subtask.transformers_backend import transformers_planner

    model, processor = build([INSTRUCTION, '{"subtask": "", "done": false}', *vocab] * 5, TabletopModelConfig(**TINY))
    save(model, processor, tmp_path)
    image = np.random.default_rng(seed).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    planner = transformers_planner(str(tmp_path), vocabulary=vocab, affordance={"candidates": candidates},
                                   prompt={"system": None, "schema_in_prompt": False, "image_size": 56})
    return planner, image


def test_beam_candidates_stay_inside_the_vocabulary_even_with_more_beams_than_replies(tmp_path):
    from planners.subtask.affordance import distinct
    from planners.subtask.reply import parse_reply

    vocab = ["put the red block in the blue bowl", "put the blue block on the red block"]
    planner, image = random_planner(tmp_path, vocab, candidates=5, seed=0)
    messages = planner.messages(INSTRUCTION, [])
    beams = distinct(planner.backend.candidates(messages, image, 5))  # 3 replies exist: two beams are padding
    steps = [parse_reply(text, planner.vocabulary) for text, _ in beams]
    assert len(beams) == 3 and len({s.subtask for s in steps}) == 3 and sum(s.done for s in steps) == 1
    scores = [s for _, s in beams]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    planner.use_affordance(lambda obs, texts: np.array([t == vocab[1] for t in texts], float))
    step = planner.plan(obs_of(image), INSTRUCTION, [])
    assert step.subtask == vocab[1] or (step.done and scores[0] == max(scores))


def test_scoring_every_reply_by_teacher_forcing_matches_beam_search(tmp_path):
    from hybrid.types import PlanStep
    from planners.subtask.reply import reply_text

    vocab = ["put the red block in the blue bowl", "put the blue block on the red block",
             "put the other red block in the red bowl"]
    planner, image = random_planner(tmp_path, vocab, candidates=4, seed=1)
    messages = planner.messages(INSTRUCTION, [])
    replies = [reply_text(PlanStep(subtask=s)) for s in vocab] + [reply_text(PlanStep(done=True))]
    exact = planner.backend.score(messages, image, replies, batch_size=3)  # two batches of the cached prompt
    beams = dict(planner.backend.candidates(messages, image, 4))
    assert set(beams) == set(replies)
    np.testing.assert_allclose(exact, [beams[r] for r in replies], rtol=1e-4, atol=1e-4)
    probs = np.exp(exact)
    assert (probs > 0).all() and probs.sum() <= 1 + 1e-4  # whole answers of one distribution


def test_fine_tuning_mixes_in_the_planners_own_situations(trained, tiny_data, tmp_path, monkeypatch, capsys):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from hybrid.testing.doubles import fake_observation
    from planners.subtask import train as trainer
    from planners.subtask.on_policy import features, situation_frame

    situations = LeRobotDataset.create("local/onpol", fps=10, root=tmp_path / "onpol", use_videos=False,
                                       features=features({"front": (32, 32, 3)}, 4, video=False))
    red, green = "put the red block in the blue bowl", "put the green block in the green bowl"
    for seed in range(3):  # the red block placed, the planner still on it: the sim says green is next
        obs = fake_observation(size=32, seed=seed)
        situations.add_frame(situation_frame(obs, INSTRUCTION, [], red, 1, PlanStep(subtask=green), frozenset({green})))
    situations.save_episode()
    situations.finalize()

    seen = []
    collate = trainer.collate
    monkeypatch.setattr(trainer, "collate", lambda proc, frames, exs, *a: seen.extend(exs) or collate(
        proc, frames, exs, *a))
    no_data, scene_naming = {"on_policy_fraction": 0.5}, {"on_policy": str(tmp_path / "onpol"), "ordinals": "scene",
                                                          "on_policy_fraction": 0.5}
    for bad in (no_data, scene_naming):
        with pytest.raises(ValueError, match="on_policy"):
            trainer.train(str(tiny_data.root), str(tmp_path / "bad"), steps=1, model=TINY, **bad)
    trainer.train(str(tiny_data.root), str(tmp_path / "mixed"), steps=2, batch_size=4, warmup_steps=1, threads=1,
                  init=str(trained), model=TINY, ordinals="history", on_policy=[str(tmp_path / "onpol")],
                  on_policy_fraction=1.0, release_noise=0.0, colour_swap=0.0, word_noise=0.0)
    n = len(open_dataset(tiny_data.root))
    assert len(seen) == 8 and {ex.frame for ex in seen} <= {n, n + 1, n + 2}  # after the recording's frames
    assert all(ex.current == red and ex.target.subtask == green and ex.releases == 1 for ex in seen)
    # `hybrid eval planner --on-policy` scores replies to those situations against the sim's labels.
    from planners.subtask import evaluate

    errors = tmp_path / "errors.jsonl"
    assert evaluate.main(["--data", str(tmp_path / "onpol"), "--model", str(tmp_path / "mixed"), "--on-policy",
                          "--json", "--errors", str(errors)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["on_policy_examples"] == {"move_on": 3} and 0 <= result["on_policy_accuracy"] <= 1
    wrong = [json.loads(line) for line in errors.read_text().splitlines()]
    assert len(wrong) == round(3 * (1 - result["on_policy_accuracy"]))
    assert all(w["label"] == "move_on" and w["target"] == green and w["current"] == red for w in wrong)


def on_policy_situations(root, size: int = 56):
    """A planner's own situations as a release-view planner's rollouts write them: two questions, the second
    after a release that placed its block (its view kept)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from planners.subtask.on_policy import features, situation_frame

    cameras = {"front": (size, size, 3), "wrist": (size, size, 3)}
    ds = LeRobotDataset.create("local/onpol", fps=10, root=root, use_videos=False,
                               features=features(cameras, 4, video=False, release_view=(size, size, 3)))
    obs = Observation(images={c: np.zeros(shape, np.uint8) for c, shape in cameras.items()},
                      state=np.zeros(4, np.float32))
    view = np.full((size, size, 3), 200, np.uint8)
    for releases, target, finished in ((0, PLAN[0], False), (1, PLAN[1], True)):
        ds.add_frame(situation_frame(obs, INSTRUCTION, [], PLAN[0], releases, PlanStep(subtask=target),
                                     frozenset({target}), view if releases else np.zeros_like(view), finished))
    ds.save_episode()
    ds.finalize()
    return ds


def test_a_release_view_planner_learns_from_its_own_situations_with_the_views_it_was_shown(
        trained, tiny_data, tmp_path):
    from hybrid.data import open_dataset
    from planners.subtask.on_policy import examples
    from planners.subtask.train import train

    onpol = on_policy_situations(tmp_path / "onpol")
    got = examples(open_dataset(onpol.root), offset=100)
    assert [(ex.release_frame, ex.release_placed) for ex in got] == [(None, None), (101, True)]
    out = tmp_path / "dagger"
    train(str(tiny_data.root), str(out), steps=2, batch_size=2, warmup_steps=1, threads=1, init=str(trained),
          model=TINY, gripper_index=2, release_camera="wrist", placed_in_prompt=True, ordinals="history",
          on_policy=str(onpol.root), on_policy_fraction=0.5)
    assert json.loads((out / "planner.json").read_text())["prompt"]["placed_in_prompt"]
    with pytest.raises(ValueError, match="placed_fraction: the recording never lets go"):  # nothing to ask about
        train(str(tiny_data.root), str(tmp_path / "bad"), steps=1, init=str(trained), model=TINY, gripper_index=2,
              release_camera="wrist", placed_fraction=0.3)
