"""Bad input fails before Ray or any model starts, naming the input and the fix.

Each case goes through `rlft train` (cli.main) or `TrainingLoop`, the way a user
meets it. "Before any model is loaded" is checked as "Ray was never started":
`build_pools` starts Ray first, then resolves and loads the models.
"""

from __future__ import annotations

import json
import re

import pytest
import ray

from rlft import cli
from rlft.config import ConfigError, load_config
from rlft.loop import TrainingLoop


@pytest.fixture(autouse=True)
def _no_ray():
    ray.shutdown()
    yield
    assert not ray.is_initialized(), "the error came after Ray (and the models) started"


def _base(tmp_path, *extra: str) -> list[str]:
    return ["model.name=tiny-random", "rollout.engine=hf", f"logging.run_dir={tmp_path}",
            "logging.loggers=[jsonl]", "ray.num_cpus=1", *extra]


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("override, message", [
    ("train.steps=abc", "train.steps: expected int, got 'abc'"),
    ("rollout.top_p=1.5", "rollout.top_p: 1.5 is out of range [0.0, 1.0]"),
    ("rollout.temperature=-1", "rollout.temperature: -1.0 is out of range"),
    ("train.lr=.nan", "train.lr: expected a number, got NaN"),
    ("train.stepz=3", "unknown config key 'train.stepz'. Did you mean 'train.steps'?"),
    ("rollout.engine=vlm", "Did you mean 'vllm'? Choices: auto, vllm, hf"),
    ("rollout.stop=[a", "override 'rollout.stop=[a': the value is not valid YAML"),
    ("ray.max_restarts=-1", "ray.max_restarts: -1 is out of range"),
])
def test_malformed_config_exits_2_naming_the_field(tmp_path, capsys, override, message):
    assert cli.main(["train", *_base(tmp_path, override)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and message in err, err


def test_config_file_that_is_not_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1,\n")
    assert cli.main(["train", str(bad)]) == 2
    assert f"config file {str(bad)!r} is not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("rows, match", [
    ([{"question": "1+1?"}], r"row 0.*'prompt'"),
    ([{"prompt": 3}], r"row 0"),
    ([{"prompt": "word " * 400}], r"data\.max_prompt_tokens=256"),
])
def test_bad_rows_name_the_row_and_the_fix(tmp_path, rows, match):
    data = _jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ValueError, match=match) as info:
        TrainingLoop(load_config(None, _base(tmp_path, f"data.source={data}")))
    assert "d.jsonl" in str(info.value)


def test_missing_field_points_at_field_map(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [{"question": "1+1?"}])
    with pytest.raises(ValueError) as info:
        TrainingLoop(load_config(None, _base(tmp_path, f"data.source={data}")))
    assert re.search(r"field_map|prompt_field", str(info.value)), str(info.value)


def test_empty_and_missing_datasets(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        TrainingLoop(load_config(None, _base(tmp_path, f"data.source={empty}")))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        TrainingLoop(load_config(None, _base(tmp_path, f"data.source={tmp_path / 'nope.jsonl'}")))
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "x"}, {"question": "y"}])
    with pytest.raises(ValueError, match="every row was skipped"):
        TrainingLoop(load_config(None, _base(tmp_path, f"data.source={bad}", "data.on_bad_row=skip")))


def test_prompt_plus_response_longer_than_the_context(tmp_path, capsys):
    # tiny-random has a context of 2048; prompts may be 3000 tokens, responses 100.
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": "word " * 2000}])
    args = _base(tmp_path, f"data.source={data}", "data.max_prompt_tokens=3000",
                 "rollout.max_new_tokens=100")
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "over the context of tiny-random (2048)" in err
    assert "lower rollout.max_new_tokens or data.max_prompt_tokens" in err


def test_reward_file_missing_or_without_the_function(tmp_path, capsys):
    missing = tmp_path / "nope.py"
    assert cli.main(["train", *_base(tmp_path, f"reward.terms=[{{name: '{missing}:f'}}]")]) == 2
    err = capsys.readouterr().err
    assert "reward.terms[0]" in err and f"file {str(missing)!r} does not exist" in err

    user = tmp_path / "my_reward.py"
    user.write_text("def score(completion, **fields):\n    return 1.0\n")
    assert cli.main(["train", *_base(tmp_path, f"reward.terms=[{{name: '{user}:scroe'}}]")]) == 2
    err = capsys.readouterr().err
    assert "defines no 'scroe'. It defines: score" in err

    strict = tmp_path / "strict_reward.py"  # a new path: modules are cached by path
    strict.write_text("def score(completion, *, prompt):\n    return 1.0\n")
    args = _base(tmp_path, f"reward.terms=[{{name: '{strict}:score', kwargs: {{alpha: 1}}}}]")
    assert cli.main(["train", *args]) == 2
    assert "takes no keyword 'alpha'" in capsys.readouterr().err


def test_reward_file_that_does_not_import_fails_the_same_way_twice(tmp_path):
    user = tmp_path / "broken_reward.py"
    user.write_text("def score(completion, **fields)\n    return 1.0\n")
    cfg = load_config(None, _base(tmp_path, f"reward.terms=[{{name: '{user}:score'}}]"))
    for _ in range(2):  # not cached half-imported: the second try is no "defines no 'score'"
        with pytest.raises(SyntaxError):
            TrainingLoop(cfg)


def test_unknown_algorithm_and_bad_resume_path(tmp_path, capsys):
    assert cli.main(["train", *_base(tmp_path, "algo.name=ppo2")]) == 2
    assert "algo.name" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint folder"):
        TrainingLoop(load_config(None, _base(tmp_path)), resume=str(tmp_path / "step-000001"))
    with pytest.raises(ConfigError):
        load_config(None, ["reward.terms=[]"])
