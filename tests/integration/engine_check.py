"""After a run: do the rollout engines hold the learner's weights? Shared by the
loop tests of the vLLM engine and of the broadcast weight transport."""

import ray
import torch
from transformers import AutoModelForCausalLM

from rlft.batch.collate import collate

# fp32 engines vs the FSDP learner's fp32 forward (packed rows): different kernels
# sum in different orders; tests/unit/workers/test_vllm_engine.py measures ~1e-5.
ATOL = 2e-4


def initial_logprobs(model_path: str, batch) -> torch.Tensor:
    """[B, L] log-probs of each token under the initial weights (0 off the response)."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids,
                       attention_mask=batch.attention_mask.long()).logits  # [B, L, V]
    lp = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    out = torch.zeros(batch.input_ids.shape)  # [B, L]
    out[:, 1:] = lp  # token t is predicted at position t-1
    return out * batch.response_mask


def check_engines_hold_learner_weights(trainer, model_path: str):
    """Sample a fresh batch on every rollout worker; its rollout log-probs must be
    the learner's for the same tokens, and unlike the initial weights' (so the
    sync mattered). Returns the prompt batch."""
    prompts = trainer.algo.make_batch(trainer.sampler.next_batch(), trainer.step,
                                      trainer.cfg.rollout.n)
    rollouts = trainer.generate(prompts, trainer.step)  # split over every rollout worker
    assert rollouts.policy_version == trainer.version
    batch, _ = collate(trainer.score(rollouts), trainer.pad_id)
    learner_lp, _ = ray.get(trainer.pools.learners[0].compute_logprobs.remote(batch))
    mask = batch.response_mask
    err = (learner_lp - batch.rollout_logprobs)[mask].abs().max().item()
    assert err < ATOL, f"the engines' rollout log-probs differ from the learner's by {err}"
    moved = (initial_logprobs(model_path, batch) - learner_lp)[mask].abs().max().item()
    print(f"max |engine - learner| log-prob {err:.2e}; moved since init {moved:.3f}")
    assert moved > 20 * ATOL
    return prompts
