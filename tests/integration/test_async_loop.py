"""train.max_staleness=0 is the synchronous loop, bit for bit (tiny random model,
transformers engine): a run through the rollout-ahead pipeline is compared with
a plain synchronous loop written out here from the loop's own calls. K = 1 (it
runs ahead, its resume after kill -9 neither skips nor repeats a prompt):
tests/faults/test_async_resume.py.
"""

from pathlib import Path

import torch
from loop_helpers import learner_weights, ray_per_module  # noqa: F401 (autouse fixture)

from rlft.config import load_config
from rlft.loop import TrainingLoop
from rlft.run.ledger import NAME, read
from rlft.run.wiring import sampling_params

REWARD = str(Path(__file__).with_name("length_reward.py")) + ":distinct_chars"
STEPS, PROMPTS = 3, 2


def _cfg(tmp_path, model_path, name, *extra):
    return load_config(None, [
        f"model.name={model_path}", "rollout.engine=hf", f"rollout.prompts_per_step={PROMPTS}",
        "rollout.n=4", "rollout.max_new_tokens=8", f"reward.terms=[{{name: '{REWARD}'}}]",
        "reward.num_workers=0", f"train.steps={STEPS}", "train.lr=1.0e-2",
        "algo.rollout_is.mode=tis", f"logging.run_dir={tmp_path}", f"logging.run_name={name}",
        "logging.loggers=[jsonl]", "ray.num_cpus=2", *extra,
    ])


def test_k0_is_the_synchronous_loop_bit_for_bit(tmp_path, tiny_model_path):
    loop = TrainingLoop(_cfg(tmp_path, tiny_model_path, "k0", "train.max_staleness=0"))
    history = [loop.train_step() for _ in range(STEPS)]
    weights = learner_weights(loop)
    loop.close()
    cfg = _cfg(tmp_path, tiny_model_path, "sync")
    ref = TrainingLoop(cfg)
    before = learner_weights(ref)
    losses, rewards = [], []
    for step in range(STEPS):  # rollout -> reward -> advantages -> update -> sync, in turn
        prompts = ref.algo.make_batch(ref.sampler.next_batch(), step, cfg.rollout.n)
        params = sampling_params(cfg, seed=cfg.train.seed * 1_000_003 + step)
        scored = ref.score(ref.generate(prompts, step, params))
        batch, _ = ref.advantages(scored, prompts, step)
        losses.append(ref.update(ref.roles[0], batch).loss)
        rewards.append(float(scored.rewards.mean()))
        ref.version += 1
        ref.sync_weights()
        ref.step += 1
    want = learner_weights(ref)
    ref.close()
    assert [m.loss for m in history] == losses
    assert [m.reward_mean for m in history] == rewards
    assert all(torch.equal(weights[k], want[k]) for k in want)
    assert [m.extra["async/staleness_max"] for m in history] == [0.0] * STEPS
    assert any(not torch.equal(weights[k], before[k]) for k in want)  # the steps trained
    ledger = read(tmp_path / "k0" / NAME)  # every prompt drawn was trained, once
    assert [g for r in ledger for g in r["draws"]] == list(range(STEPS * PROMPTS))


def test_k1_runs_multi_turn_tool_rollouts(tmp_path, tiny_model_path):
    """Multi-turn tools under the asynchronous loop: Prefix-RFT forces each
    demonstration's first model turn (a `builtin:tool_use` call) on half the
    samples, the tool runs, its result comes back as a tool message, and the
    rollouts that ran one step ahead train with their masks and versions."""
    cfg = _cfg(tmp_path, tiny_model_path, "tools", "train.max_staleness=1",
               "data.source=builtin:tool_use", "rollout.tools=[calculator, lookup]",
               "rollout.max_turns=2", "rollout.max_total_tokens=96", "algo.name=prefix_rft",
               "algo.prefix.fraction=0.5", "algo.prefix.low_start=1.0",
               "algo.prefix.high_start=1.0", "algo.prefix.low_end=1.0",
               "algo.prefix.high_end=1.0", "reward.terms=[{name: accuracy}]",
               # The random model never ends a turn: a space stops it (sampled text
               # only, not the forced call), so the called turn completes and its call runs.
               "rollout.stop=[' ']")
    loop = TrainingLoop(cfg)
    try:
        history = loop.train()
    finally:
        loop.close()
    assert [m.step for m in history] == list(range(STEPS))
    for m in history:  # half the samples called a tool (the forced call) and read its result
        assert m.extra["rollout/tool_calls_mean"] >= 0.5, m.extra
        assert m.extra["rollout/turns_mean"] > 1.0, m.extra
        assert m.extra["rollout/tool_errors"] == 0.0, m.extra
    assert max(m.extra["async/staleness_mean"] for m in history) > 0  # it ran ahead
    trained = read(tmp_path / "tools" / NAME)
    assert [r["step"] for r in trained] == list(range(STEPS))


def test_k1_runs_bank_episodes_over_two_user_turns(tmp_path, tiny_model_path):
    """Stateful episodes (rollout.env=bank) under the asynchronous loop: Prefix-RFT
    forces each demonstration's first call on half the samples; the bank in the
    sample's own environment process runs it, the model's next turn without a call
    brings the second user turn, and state_match scores the end states. With
    LoRA adapters: the merged weights the engine gets move only in the adapted
    linear layers (embeddings, norms and lm_head are frozen)."""
    cfg = _cfg(tmp_path, tiny_model_path, "bank", "train.max_staleness=1",
               "data.source=builtin:bank", "rollout.env=bank", "rollout.max_turns=4",
               "rollout.max_total_tokens=160", "algo.name=prefix_rft",
               "algo.prefix.fraction=0.5", "algo.prefix.low_start=1.0",
               "algo.prefix.high_start=1.0", "algo.prefix.low_end=1.0",
               "algo.prefix.high_end=1.0", "reward.terms=[{name: state_match}]",
               "rollout.stop=[' ']",  # a space ends the random model's turns
               "model.lora.r=4")
    loop = TrainingLoop(cfg)
    try:
        before = learner_weights(loop)
        history = loop.train()
        after = learner_weights(loop)
    finally:
        loop.close()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed), sorted(changed)[:5]
    for m in history:
        assert m.extra["rollout/tool_calls_mean"] >= 0.5, m.extra  # the forced calls ran
        assert m.extra["env/steps_mean"] >= 2.0, m.extra  # the second user turn came in
        assert m.extra["env/errors"] == 0.0, m.extra
        assert "env/state_match" in m.extra and m.reward_components["state_match"] > 0.0
    assert max(m.extra["async/staleness_mean"] for m in history) > 0
