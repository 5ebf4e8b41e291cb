"""The self-reward actor: scores rollouts with log pi_SFT - log pi_base.

It holds both models frozen (plain modules, no FSDP: they only run forward)
and stands in for the `RewardService` behind the same verb, `score(Rollouts)
-> ScoredRollouts`, so the training loop's reward stage does not change. The
math (sum over response tokens, normalisation) is
`rlft.algos.self_rewarding.sequence_rewards`.
"""

from __future__ import annotations

import time

import torch

from rlft.algos.self_rewarding import SELF_REWARD_NORMS, sequence_rewards
from rlft.batch.collate import collate
from rlft.learner.microbatch import plan_micro_batches, seq_lengths
from rlft.learner.model import PolicyLogprobs
from rlft.types import Rollouts, ScoredRollouts, TrainBatch


class SelfRewardScorer:
    """`sft_model` / `base_model`: names for `rlft.models.load_causal_lm` (folder,
    alias or hub id). `norm`: a name in rlft.algos.self_rewarding.SELF_REWARD_NORMS."""

    def __init__(self, sft_model: str, base_model: str, norm: str = "none", eps: float = 1e-6,
                 micro_batch_tokens: int = 4096, logprob_chunk: int = 1024,
                 dtype: str = "float32") -> None:
        if not sft_model:
            raise ValueError("SelfRewardScorer needs sft_model (algo.self_reward.sft_model, or "
                             "leave it unset so the run trains one first)")
        if norm not in SELF_REWARD_NORMS:
            raise ValueError(f"algo.self_reward.norm={norm!r}; choices: "
                             f"{', '.join(SELF_REWARD_NORMS.names())}")
        self.norm, self.eps, self.budget = norm, eps, micro_batch_tokens
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.sft = self._load(sft_model, logprob_chunk, getattr(torch, dtype))
        self.base = self._load(base_model, logprob_chunk, getattr(torch, dtype))

    def _load(self, name: str, chunk: int, dtype: torch.dtype) -> PolicyLogprobs:
        from rlft.models import load_causal_lm

        lm = load_causal_lm(name, dtype).eval().requires_grad_(False)
        return PolicyLogprobs(lm, chunk).to(self.device)

    @torch.no_grad()
    def logprobs(self, module: PolicyLogprobs, batch: TrainBatch) -> torch.Tensor:
        """[B, L] CPU float32 log-probs of the response tokens (0 elsewhere)."""
        out = torch.zeros(batch.input_ids.shape)  # [B, L]
        lengths = seq_lengths(batch.attention_mask).tolist()
        for mb in plan_micro_batches(lengths, self.budget):
            ids = batch.input_ids[mb.rows, :mb.cols].to(self.device)  # [b, cols]
            am = batch.attention_mask[mb.rows, :mb.cols].to(self.device)
            sel = batch.response_mask[mb.rows, :mb.cols].to(self.device)
            lp, _ = module(ids, am, sel)  # [b, cols]
            out[mb.rows, :mb.cols] = lp.float().cpu()
        return out

    def score(self, rollouts: Rollouts) -> ScoredRollouts:
        start = time.perf_counter()
        n = len(rollouts)
        # Padding is masked out, so its id does not matter.
        batch, _ = collate(ScoredRollouts(rollouts, torch.zeros(n), {}), pad_id=0)
        mask = batch.loss_mask(rows="policy")  # [B, L]
        batch = batch.with_(response_mask=mask)
        sft, base = self.logprobs(self.sft, batch), self.logprobs(self.base, batch)
        rewards, raw = sequence_rewards(sft, base, mask, batch.group_id, self.norm, self.eps)
        return ScoredRollouts(rollouts=rollouts, rewards=rewards.float(),
                              components={"log_ratio": raw.float()},
                              seconds=time.perf_counter() - start)

    def close(self) -> None:
        """Nothing to release (the RewardService's verb, for symmetry)."""
