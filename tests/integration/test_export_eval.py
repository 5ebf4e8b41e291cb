"""`rlft export` and `rlft eval` on one real 2-step run (tiny model, local Ray),
plus the in-loop evaluation that run logs."""

import json
import shutil
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlft.cli import main
from rlft.config import load_config
from rlft.data.sources import load_rows
from rlft.loop import TrainingLoop

HERE = Path(__file__).parent
TRAIN_REWARD = f"{HERE / 'length_reward.py'}:distinct_chars"
METRICS = {"reward_mean", "reward_std", "pass@1", "pass@2", "response_len_mean",
           "truncated_frac", "reward_failures"}


def _items(model_path, run_dir, reward=TRAIN_REWARD):
    return [f"model.name={model_path}", "rollout.engine=hf", "rollout.prompts_per_step=2",
            "rollout.n=2", "rollout.max_new_tokens=8", f"reward.terms=[{{name: '{reward}'}}]",
            "reward.num_workers=0", "train.steps=2", "train.lr=1.0e-3", f"logging.run_dir={run_dir}",
            "logging.run_name=run", "logging.loggers=[jsonl]", "ray.num_cpus=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_path):
    """(run folder, the learner's final weights) of a 2-step run evaluated after step 2."""
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, _items(tiny_model_path, root) + [
        "train.eval_every=2", "train.eval_prompts=3", "train.eval_threshold=0.1"])
    trainer = TrainingLoop(cfg)
    try:
        trainer.train()
        weights = ray.get(trainer.pools.learners[0].full_state.remote())
    finally:
        trainer.close()
        ray.shutdown()
    return root / "run", weights


def test_in_loop_eval_joins_the_step_record(run):
    lines = [json.loads(x) for x in (run[0] / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert not any(k.startswith("eval/") for k in lines[0])  # eval_every=2: after step 2 only
    evals = {k.removeprefix("eval/"): v for k, v in lines[1].items() if k.startswith("eval/")}
    assert METRICS <= set(evals)
    assert 0.0 <= evals["pass@1"] <= evals["pass@2"] <= 1.0


def test_export_reloads_with_transformers_and_equals_the_learner(run, tmp_path, tiny_model_path):
    run_dir, weights = run
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    state = model.state_dict()
    assert set(weights) <= set(state)
    for name, tensor in weights.items():
        assert torch.equal(state[name], tensor), f"{name} differs from the learner's"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    assert any(not torch.equal(base[k], state[k]) for k in weights)  # trained, not the base
    tok, base_tok = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(
        tiny_model_path)
    assert tok("What is 2 + 3?")["input_ids"] == base_tok("What is 2 + 3?")["input_ids"]
    assert json.loads((out / "rlft_export.json").read_text())["step"] == 2


def test_eval_run_dir_writes_json_and_markdown(run):
    run_dir = run[0]
    assert main(["eval", str(run_dir), "--k", "2", "--limit", "3",
                 "train.eval_threshold=0.1"]) == 0
    report = json.loads((run_dir / "eval.json").read_text())
    assert METRICS <= set(report["metrics"])
    assert 0.0 <= report["metrics"]["pass@1"] <= report["metrics"]["pass@2"] <= 1.0
    assert report["settings"]["prompts"] == 3 and report["settings"]["samples_per_prompt"] == 2
    assert report["settings"]["checkpoint"].endswith("step-000002")
    md = (run_dir / "eval.md").read_text()
    assert "| metric | value |" in md and "| pass@2 |" in md


@pytest.mark.parametrize("reward", ["always_one", "even_answer"])
def test_eval_pass_at_k_equals_the_hand_count(reward, tmp_path, tiny_model_path):
    limit = 5
    answers = [int(r["answer"]) for r in load_rows("builtin:arithmetic", "eval")][:limit]
    expected = 1.0 if reward == "always_one" else sum(a % 2 == 0 for a in answers) / limit
    assert reward == "always_one" or 0 < expected < 1  # the case is not trivial
    items = _items(tiny_model_path, tmp_path, f"{HERE / 'eval_rewards.py'}:{reward}")
    assert main(["eval", *items, "rollout.n=3", "--k", "2", "--limit", str(limit),
                 "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "eval.json").read_text())["metrics"]
    assert metrics["pass@1"] == pytest.approx(expected)
    assert metrics["pass@2"] == pytest.approx(expected)
    assert metrics["reward_mean"] == pytest.approx(expected)


def test_export_errors_name_the_path_and_the_fix(run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    assert main(["export", str(tmp_path / "bare"), str(tmp_path / "out")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(run[0] / "config.yaml", fresh / "config.yaml")
    assert main(["export", str(fresh), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and str(fresh) in err and "--resume auto" in err
