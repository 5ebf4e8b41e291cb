"""Metric sinks: secrets scrubbed, wandb mode, TensorBoard events, registry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rlft.run import tracking
from rlft.run.tracking import REDACTED, scrub
from rlft.types import RewardFailures, StepMetrics

KEY = "wandb-" + "7" * 34


def _metrics(step: int) -> StepMetrics:
    return StepMetrics(step=step, policy_version=step, reward_mean=0.5 + step, reward_std=0.1,
                       reward_components={"accuracy": 0.5}, response_len_mean=10.0,
                       loss=0.25, kl=0.0, entropy=1.0, clip_frac=0.0, grad_norm=1.0,
                       tokens_per_s=100.0, reward_failures=RewardFailures(),
                       stage_seconds={"rollout": 1.0})


def test_scrub_redacts_secret_names_and_secret_values_only():
    cfg = {"rollout": {"max_new_tokens": 24, "top_k": 5},
           "hub": {"hf_token": "abc", "api-key": "x", "WANDB_API_KEY": "y", "token": None},
           "data": {"source": f"https://user:{KEY}@example.org/d.jsonl"},
           "list": [{"db_password": "p"}, "plain"]}
    out = scrub(cfg, secrets=(KEY,))
    assert out["rollout"] == {"max_new_tokens": 24, "top_k": 5}  # `tokens` is no secret
    assert out["hub"] == {"hf_token": REDACTED, "api-key": REDACTED, "WANDB_API_KEY": REDACTED,
                          "token": None}
    assert KEY not in out["data"]["source"] and REDACTED in out["data"]["source"]
    assert out["list"] == [{"db_password": REDACTED}, "plain"]
    assert cfg["hub"]["hf_token"] == "abc"  # a copy: the caller's dict is unchanged


def test_scrub_reads_secret_values_from_the_environment(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", KEY)
    assert scrub({"note": f"key={KEY}"}) == {"note": f"key={REDACTED}"}


def test_wandb_mode_follows_key_netrc_and_wandb_mode(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert tracking.wandb_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    assert tracking.wandb_mode() == "online"
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert tracking.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.wandb_mode() == "offline"


def test_tensorboard_sink_writes_scalars_and_the_scrubbed_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sinks = tracking.make_sinks(["tensorboard"], tmp_path, "r", "p",
                                {"hub": {"hf_token": KEY}, "_run": {"git_commit": "abc"}}, 2, 0)
    for step in range(2):
        sinks[0].log(_metrics(step))
    sinks[0].close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tensorboard"),
                           size_guidance={"tensors": 0, "scalars": 0}).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(0, 0.5), (1, 1.5)]
    assert "step" not in acc.Tags()["scalars"]
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "git_commit: abc" in config_text and REDACTED in config_text
    assert KEY.encode() not in events[0].read_bytes()


def test_tensorboard_missing_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install tensorboard"):
        tracking.TensorBoardSink(tmp_path, {})


def test_make_sinks_rejects_an_unknown_sink_before_opening_any(tmp_path):
    with pytest.raises(ValueError, match="Choices: console, jsonl, wandb, tensorboard"):
        tracking.make_sinks(["jsonl", "mlflow"], tmp_path, "r", "p", {}, 1, 0)
    assert not Path(tmp_path / "metrics.jsonl").exists()  # checked before anything opens


def test_config_accepts_tensorboard_and_lists_it_as_a_choice():
    from rlft.config import ConfigError, load_config

    assert load_config(None, ["logging.loggers=[tensorboard]"]).logging.loggers == ["tensorboard"]
    with pytest.raises(ConfigError, match="logging.loggers: 'tensorbord'.*tensorboard"):
        load_config(None, ["logging.loggers=[tensorbord]"])


def _steps(path: Path) -> list[int]:
    import json

    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_jsonl_sink_of_a_resumed_run_drops_the_steps_it_redoes(tmp_path):
    crashed = tracking.make_sinks(["jsonl"], tmp_path, "r", "p", {}, 6, 0)[0]
    for step in range(5):  # the crashed run got to step 4; its last checkpoint is step 3
        crashed.log(_metrics(step))
    crashed.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "rew')  # torn by kill -9 mid-write
    resumed = tracking.make_sinks(["jsonl"], tmp_path, "r", "p", {}, 6, 3)[0]
    for step in range(3, 6):
        resumed.log(_metrics(step))
    resumed.close()
    assert _steps(tmp_path / "metrics.jsonl") == [0, 1, 2, 3, 4, 5]  # each step once
    assert not list(tmp_path.glob("*.tmp"))


def test_jsonl_sink_of_a_fresh_run_appends(tmp_path):
    for first in (0, 0):  # two launches of a fresh (not resumed) run keep both records
        sink = tracking.make_sinks(["jsonl"], tmp_path, "r", "p", {}, 1, first)[0]
        sink.log(_metrics(0))
        sink.close()
    assert _steps(tmp_path / "metrics.jsonl") == [0, 0]


def test_tensorboard_sink_of_a_resumed_run_purges_the_redone_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    crashed = tracking.make_sinks(["tensorboard"], tmp_path, "r", "p", {}, 4, 0)[0]
    for step in range(3):
        crashed.log(_metrics(step))
    crashed.close()
    resumed = tracking.make_sinks(["tensorboard"], tmp_path, "r", "p", {}, 4, 1)[0]
    for step in range(1, 4):
        resumed.log(_metrics(step))
    resumed.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in acc.Scalars("reward/mean")] == [0, 1, 2, 3]
