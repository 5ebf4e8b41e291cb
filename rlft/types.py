"""Typed records that cross every stage boundary (docs/architecture.md, "The loop").

Shape letters: B sequences, G samples per prompt, L full sequence length
(prompt + response, right-padded), V vocabulary. Per-token tensors in a
`TrainBatch` are [B, L] and aligned with `input_ids`: entry t scores token t
given tokens < t, so prompt and padding positions are simply masked out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass(frozen=True)
class Prompt:
    """One dataset row, rendered for the policy.

    `fields` carries the row's task fields (`answer`, `schema`, `tools`,
    `demonstration`, and any user column) through to the reward functions.
    """

    uid: str
    text: str  # chat-templated prompt, ready to tokenise
    prompt_ids: tuple[int, ...]
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> Any:
        return self.fields.get("answer")

    @property
    def demonstration(self) -> str | None:
        return self.fields.get("demonstration")


@dataclass(frozen=True)
class PromptBatch:
    """What the rollout workers are asked to continue.

    Each request is a prompt plus an optional forced prefix (Prefix-RFT puts a
    demonstration prefix there); the engine draws `n` samples per request. All
    samples of one request share `group_id`; advantages are computed per group.
    """

    prompts: tuple[Prompt, ...]
    prefix_ids: tuple[tuple[int, ...], ...]  # one per prompt, () for none
    group_id: tuple[int, ...]  # one per prompt
    n: int  # samples per request (G)

    def __post_init__(self) -> None:
        if not (len(self.prompts) == len(self.prefix_ids) == len(self.group_id)):
            raise ValueError(
                f"PromptBatch fields disagree in length: prompts={len(self.prompts)}, "
                f"prefix_ids={len(self.prefix_ids)}, group_id={len(self.group_id)}"
            )
        if self.n < 1:
            raise ValueError(f"PromptBatch.n must be >= 1, got {self.n}")

    def shards(self, k: int) -> list[PromptBatch]:
        """Contiguous request shards, one per rollout worker. A group spread over several
        requests (Prefix-RFT) may straddle two shards: advantages run after the join."""
        size = -(-len(self.prompts) // k)
        return [PromptBatch(prompts=self.prompts[i:i + size], prefix_ids=self.prefix_ids[i:i + size],
                            group_id=self.group_id[i:i + size], n=self.n)
                for i in range(0, k * size, size)]

    @staticmethod
    def plain(prompts: list[Prompt], n: int, first_group: int = 0) -> PromptBatch:
        """Every prompt its own group, no prefixes."""
        return PromptBatch(
            prompts=tuple(prompts),
            prefix_ids=tuple(() for _ in prompts),
            group_id=tuple(range(first_group, first_group + len(prompts))),
            n=n,
        )


@dataclass(frozen=True)
class EpisodeEnd:
    """How one sample's environment episode ended (`rollout.env`)."""

    state: Any = None  # the environment's end state, as JSON (None: lost with its process)
    reward: float | None = None  # the sum of the rewards its `step` returned, if any
    steps: int = 0  # environment steps taken
    error: str = ""  # why the environment failed, if it did


@dataclass(frozen=True)
class Rollouts:
    """Samples from one policy version, one entry per sample (B = requests·n).

    `response_ids` includes any forced prefix; `prefix_len[b]` says how many of
    its leading tokens were forced rather than sampled. `rollout_logprobs` are
    the engine's log-probs of the response tokens (prefix tokens included, as
    scored by the engine), used for off-policy diagnostics and importance
    correction.
    """

    prompt_index: tuple[int, ...]  # index into `prompts`
    prompts: tuple[Prompt, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    response_ids: tuple[tuple[int, ...], ...]
    response_text: tuple[str, ...]
    rollout_logprobs: tuple[tuple[float, ...], ...]
    prefix_len: tuple[int, ...]
    finish_reason: tuple[str, ...]  # "stop" | "length"
    group_id: tuple[int, ...]
    policy_version: int
    expert: tuple[bool, ...] = ()  # True for injected demonstrations (CHORD)
    # Multi-turn (rollout.tools, workers/turns.py); empty for single-turn rollouts.
    model_mask: tuple[tuple[bool, ...], ...] = ()  # per response token: sampled by the model
    conversation: tuple[tuple[Mapping[str, Any], ...], ...] = ()  # messages after the prompt
    tool_seconds: float = 0.0  # wall time spent in tool calls
    episodes: tuple[EpisodeEnd | None, ...] = ()  # rollout.env: how each sample's episode ended

    def __len__(self) -> int:
        return len(self.response_ids)

    def row(self, b: int) -> Prompt:
        return self.prompts[self.prompt_index[b]]

    @staticmethod
    def concat(parts: list[Rollouts]) -> Rollouts:
        """Join rollouts from several workers; prompt indices are re-based."""
        if not parts:
            raise ValueError("Rollouts.concat needs at least one part")
        versions = {p.policy_version for p in parts}
        if len(versions) != 1:
            raise ValueError(f"cannot mix policy versions in one batch: {sorted(versions)}")
        prompts: list[Prompt] = []
        index: list[int] = []
        for p in parts:
            index.extend(i + len(prompts) for i in p.prompt_index)
            prompts.extend(p.prompts)

        def cat(name: str) -> tuple:
            return tuple(x for p in parts for x in getattr(p, name))

        return Rollouts(
            prompt_index=tuple(index),
            prompts=tuple(prompts),
            prompt_ids=cat("prompt_ids"),
            response_ids=cat("response_ids"),
            response_text=cat("response_text"),
            rollout_logprobs=cat("rollout_logprobs"),
            prefix_len=cat("prefix_len"),
            finish_reason=cat("finish_reason"),
            group_id=cat("group_id"),
            policy_version=parts[0].policy_version,
            expert=tuple(e for p in parts for e in (p.expert or (False,) * len(p))),
            model_mask=_joined(parts, "model_mask", lambda p: tuple(
                (True,) * len(r) for r in p.response_ids)),
            conversation=_joined(parts, "conversation", lambda p: ((),) * len(p)),
            tool_seconds=sum(p.tool_seconds for p in parts),
            episodes=_joined(parts, "episodes", lambda p: (None,) * len(p)),
        )


def _joined(parts: list[Rollouts], name: str, default: Any) -> tuple:
    """A per-sample multi-turn field across parts: empty when no part has it, else each
    part's own or `default(part)` (single-turn parts, e.g. demonstration rows)."""
    if not any(getattr(p, name) for p in parts):
        return ()
    return tuple(x for p in parts for x in (getattr(p, name) or default(p)))


@dataclass(frozen=True)
class RewardFailures:
    """Per-kind counts of samples whose reward call failed this batch."""

    raised: int = 0
    timeout: int = 0
    invalid: int = 0  # NaN, inf, or a value of the wrong type

    @property
    def total(self) -> int:
        return self.raised + self.timeout + self.invalid


@dataclass(frozen=True)
class ScoredRollouts:
    """Rollouts plus one scalar reward per sample and its named components."""

    rollouts: Rollouts
    rewards: torch.Tensor  # [B] float32, failures already replaced by the fallback
    components: Mapping[str, torch.Tensor]  # name -> [B]; NaN where not applicable
    failures: RewardFailures = RewardFailures()
    seconds: float = 0.0


TOKENS = ("all", "sampled", "prefix")  # response tokens: all, the engine's draws, a forced prefix
ROWS = ("all", "policy", "expert")  # rows: all, sampled ones, demonstrations


def loss_mask(response_mask: torch.Tensor, prefix_mask: torch.Tensor | None = None,
              expert_mask: torch.Tensor | None = None, tokens: str = "all",
              rows: str = "all") -> torch.Tensor:
    """[B, L] bool: which tokens count, the one definition every stage uses.

    `response_mask` restricted to `tokens` (TOKENS) of `rows` (ROWS). Without a
    `prefix_mask` no token is forced; without an `expert_mask` ([B]) every row
    is a policy row.

    >>> resp = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    >>> prefix = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    >>> loss_mask(resp, prefix, torch.tensor([False, True]), "sampled", "policy").int().tolist()
    [[0, 0, 0, 1], [0, 0, 0, 0]]
    """
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {', '.join(TOKENS)}; got {tokens!r}")
    if rows not in ROWS:
        raise ValueError(f"rows must be one of {', '.join(ROWS)}; got {rows!r}")
    mask = response_mask.bool()
    if tokens != "all":
        forced = prefix_mask.bool() if prefix_mask is not None else torch.zeros_like(mask)
        mask = mask & (forced if tokens == "prefix" else ~forced)
    if rows != "all":
        expert = expert_mask.bool() if expert_mask is not None else \
            torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
        mask = mask & (expert if rows == "expert" else ~expert)[:, None]
    return mask


@dataclass(frozen=True)
class TrainBatch:
    """Padded tensors the learner consumes. Per-token fields are [B, L]."""

    input_ids: torch.Tensor  # [B, L] long, right-padded
    attention_mask: torch.Tensor  # [B, L] bool
    response_mask: torch.Tensor  # [B, L] bool, tokens that carry loss
    advantages: torch.Tensor  # [B, L] float32
    group_id: torch.Tensor  # [B] long
    policy_version: int
    rollout_logprobs: torch.Tensor | None = None  # [B, L]
    old_logprobs: torch.Tensor | None = None  # [B, L]
    ref_logprobs: torch.Tensor | None = None  # [B, L]
    returns: torch.Tensor | None = None  # [B, L]
    old_values: torch.Tensor | None = None  # [B, L] critic values before the update
    prefix_mask: torch.Tensor | None = None  # [B, L] bool, forced prefix tokens
    expert_mask: torch.Tensor | None = None  # [B] bool, demonstration rows
    truncated: torch.Tensor | None = None  # [B] bool, cut at the length cap (finish "length")

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())

    def loss_mask(self, tokens: str = "all", rows: str = "all") -> torch.Tensor:
        """[B, L] bool: `tokens` of `rows` (module-level `loss_mask`)."""
        return loss_mask(self.response_mask, self.prefix_mask, self.expert_mask, tokens, rows)

    def with_(self, **changes: Any) -> TrainBatch:
        return replace(self, **changes)

    def select(self, rows: torch.Tensor | slice) -> TrainBatch:
        """Row subset (micro-batches, data-parallel shards)."""
        changes = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                changes[name] = value[rows]
        return replace(self, **changes)

    def rank_rows(self, rank: int, world: int) -> TrainBatch:
        """Rank `rank`'s data-parallel shard: rows rank, rank+world, ..."""
        return self if world == 1 else self.select(slice(rank, None, world))


@dataclass(frozen=True)
class StepMetrics:
    """What one training step reports (console, JSONL, wandb)."""

    step: int
    policy_version: int
    reward_mean: float
    reward_std: float
    response_len_mean: float
    loss: float
    grad_norm: float
    entropy: float
    kl: float
    clip_frac: float
    tokens_per_s: float
    stage_seconds: Mapping[str, float]  # rollout, reward, advantage, update, sync
    reward_components: Mapping[str, float] = field(default_factory=dict)
    reward_failures: RewardFailures = RewardFailures()
    extra: Mapping[str, float] = field(default_factory=dict)  # algorithm-specific (e.g. mu)

    def flat(self) -> dict[str, float]:
        """One flat record for JSONL and wandb."""
        out: dict[str, float] = {
            "step": self.step,
            "policy_version": self.policy_version,
            "reward/mean": self.reward_mean,
            "reward/std": self.reward_std,
            "response_len/mean": self.response_len_mean,
            "loss": self.loss,
            "grad_norm": self.grad_norm,
            "entropy": self.entropy,
            "kl": self.kl,
            "clip_frac": self.clip_frac,
            "tokens_per_s": self.tokens_per_s,
            "reward_failures/raised": self.reward_failures.raised,
            "reward_failures/timeout": self.reward_failures.timeout,
            "reward_failures/invalid": self.reward_failures.invalid,
        }
        out.update({f"time/{k}": v for k, v in self.stage_seconds.items()})
        out.update({f"reward/{k}": v for k, v in self.reward_components.items()})
        out.update(self.extra)
        return out
