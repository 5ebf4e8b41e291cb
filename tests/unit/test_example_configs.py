"""Every example config in launch/configs loads and builds its algorithm (on the
tiny model, so no download is needed); DAPO's has what makes it DAPO."""

from pathlib import Path

import pytest

from rlft.algos.catalogue import build_algorithm
from rlft.algos.shaping import overlong_penalty
from rlft.batch.groups import varied_groups
from rlft.config import load_config

CONFIGS = sorted((Path(__file__).parents[2] / "launch" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_builds(path):
    cfg = load_config(str(path), ["model.name=tiny-random"])
    if path.name != "sft.yaml":
        assert build_algorithm(cfg).name == cfg.algo.name


def test_dapo_config_is_dapo():
    cfg = load_config(str(CONFIGS[0].with_name("dapo.yaml")), ["model.name=tiny-random"])
    algo = build_algorithm(cfg)
    assert cfg.algo.clip_high > cfg.algo.clip_low and cfg.algo.kl_coef == 0
    # clip-higher binds only when a batch gets more than one update
    assert cfg.train.epochs * cfg.train.minibatches > 1
    assert algo.keep_groups is varied_groups and algo.filter_rounds > 1
    assert algo.shape_rewards.func is overlong_penalty
    assert algo.shape_rewards.keywords["max_len"] == cfg.rollout.max_new_tokens
    assert [t.agg for t in algo.terms(0)] == ["token_mean"]
