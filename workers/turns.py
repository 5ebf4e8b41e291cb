"""The turn loop: the model writes, calls tools, reads their results and goes on.

Engine-agnostic: it asks any `RolloutEngine` to continue token-id contexts
(one `generate` call per turn for every unfinished sample of the batch, so
vLLM's prefix cache and the transformers engine's batching both apply) and a
`Responder` to answer each turn: `ToolResponder` runs the calls through a
`ToolRunner` (or anything with its `run`); an environment's
(`rlft.workers.episodes`) steps the sample's episode.

Token in, token out. A trajectory is token ids from start to end: the model's
tokens exactly as sampled, then each tool turn as the chat template's glue
around the tool messages, tokenized on its own (`ChatGlue`) and appended.
Earlier turns are never re-tokenized, so the learner trains on the very
tokens the engine sampled. `model_mask` is True on the model's tokens only;
tool results and template glue carry no loss, and their log-probs are 0.

A turn ends at the engine's stop (EOS or a stop string) or its length cap.
It calls tools when `rewards/tool_parse.parse_calls` finds calls in it (the
Hermes/Qwen `<tool_call>{...}</tool_call>` blocks and the JSON call forms
the `tool_call` reward reads); a `<tool_call>` block that holds no readable
call gets an error message, as a failed tool would. A trajectory ends at an
answer (with tools: a turn with no call; in an environment: when it says
done), at `max_turns` model turns, when the engine
stops it for length, or when `max_total_tokens` (all turns and tool
messages, after the prompt) would be exceeded (finish reason "length").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from rlft.data.chat_glue import ChatGlue
from rlft.rewards.tool_parse import TAGGED, parse_calls
from rlft.types import Prompt, PromptBatch, Rollouts
from rlft.workers.tools import ToolRequest, ToolResult, ToolRunner, ToolSettings

CALL_FORMAT = '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>'


class ToolExecutor(Protocol):
    def run(self, requests: Sequence[ToolRequest]) -> list[ToolResult]: ...


class Responder(Protocol):
    """What answers a model turn: tools (`ToolResponder`) or an environment
    (`rlft.workers.episodes.EnvResponder`)."""

    def respond(self, trajs: list[Trajectory], tok: Any, limits: TurnLimits) -> None:
        """Every trajectory here just took a model turn and is not finished: append
        the answer to it (`append`), or finish it."""
        ...


@dataclass
class Trajectory:
    """One sample across all its turns. `ids`, `model_mask`, `logprobs` align token for token."""

    prompt_index: int
    group_id: int
    prompt_ids: tuple[int, ...]
    prefix_len: int = 0
    ids: list[int] = field(default_factory=list)  # everything after the prompt
    model_mask: list[bool] = field(default_factory=list)  # True: sampled by the model
    logprobs: list[float] = field(default_factory=list)  # the engine's; 0.0 where masked
    messages: list[dict] = field(default_factory=list)  # assistant and tool messages
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    finish_reason: str = ""  # "" while it goes on; then "stop" | "length"
    pending: list[ToolRequest] = field(default_factory=list, repr=False)  # this turn's calls
    episode: int = -1  # rollout.env: the environment episode it plays
    env_reward: float | None = None  # the sum of the rewards its environment returned
    env_steps: int = 0

    @property
    def answer(self) -> str:
        """The last assistant message's text (what an answer reward reads)."""
        said = [m["content"] for m in self.messages if m["role"] == "assistant"]
        return said[-1] if said else ""


def requests_in(text: str) -> list[ToolRequest]:
    """The tool calls of one model turn; an unreadable `<tool_call>` block is an error request.

    >>> requests_in('<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}'
    ...             '</tool_call>')
    [ToolRequest(name='calculator', arguments={'expression': '1+1'}, error='')]
    >>> requests_in("The answer is 2."), requests_in("<tool_call>calculator(1+1)</tool_call>")[0].error[:24]
    ([], 'could not read this tool')
    """
    calls = parse_calls(text)
    if not calls and TAGGED.search(text):
        return [ToolRequest("?", None, f"could not read this tool call; write {CALL_FORMAT}")]
    return [ToolRequest(c.name, c.arguments) if c.arguments is not None else
            ToolRequest(c.name, None, f"the arguments of {c.name!r} are not a JSON object; "
                                      f"write {CALL_FORMAT}")
            for c in calls]


@dataclass(frozen=True)
class TurnLimits:
    max_turns: int = 4  # model turns per trajectory
    max_total_tokens: int = 512  # after the prompt: every turn and tool message

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_total_tokens < 1:
            raise ValueError(f"rollout.max_turns ({self.max_turns}) and rollout.max_total_tokens "
                             f"({self.max_total_tokens}) must be >= 1")


def run_turns(engine: Any, tok: Any, batch: PromptBatch, params: Any, tools: ToolExecutor,
              glue: ChatGlue, limits: TurnLimits) -> list[Trajectory]:
    """Every sample of `batch` (`batch.n` per prompt) to its end with `tools`; see the
    module docstring."""
    params = capped(params, limits)
    first = engine.generate(batch, params)
    trajs = [Trajectory(first.prompt_index[b], first.group_id[b], first.prompt_ids[b],
                         first.prefix_len[b]) for b in range(len(first))]
    return continue_turns(engine, tok, batch, params, trajs, first,
                          ToolResponder(tools, glue), limits)


def capped(params: Any, limits: TurnLimits) -> Any:
    return replace(params, max_new_tokens=min(params.max_new_tokens, limits.max_total_tokens))


def continue_turns(engine: Any, tok: Any, batch: PromptBatch, params: Any,
                   trajs: list[Trajectory], first: Rollouts, responder: Responder,
                   limits: TurnLimits) -> list[Trajectory]:
    """Take the first turn `first` into `trajs`, then alternate `responder` and one
    `generate` for every unfinished trajectory until all have finished."""
    take_turn(trajs, range(len(trajs)), first, tok, limits)
    while True:
        waiting = [t for t in trajs if not t.finish_reason]
        if waiting:
            responder.respond(waiting, tok, limits)
        live = [i for i, t in enumerate(trajs) if not t.finish_reason]
        if not live:
            return trajs
        take_turn(trajs, live, engine.generate(*next_turn(batch, trajs, live, params, limits)),
                  tok, limits)


def next_turn(batch: PromptBatch, trajs: list[Trajectory], live: Sequence[int], params: Any,
              limits: TurnLimits) -> tuple[PromptBatch, Any]:
    """The request that continues trajectories `live`: each one's tokens so far as its
    prompt (n=1), the turn capped at the room the longest budget has left."""
    room = max(limits.max_total_tokens - len(trajs[i].ids) for i in live)
    prompts = tuple(Prompt(batch.prompts[trajs[i].prompt_index].uid,
                           batch.prompts[trajs[i].prompt_index].text,
                           trajs[i].prompt_ids + tuple(trajs[i].ids),
                           batch.prompts[trajs[i].prompt_index].fields) for i in live)
    more = PromptBatch(prompts, tuple(() for _ in live), tuple(trajs[i].group_id for i in live),
                       n=1)
    seed = None if params.seed is None else params.seed + trajs[live[0]].turns
    return more, replace(params, max_new_tokens=min(params.max_new_tokens, room), seed=seed)


def take_turn(trajs: list[Trajectory], which: Sequence[int], out: Rollouts, tok: Any,
               limits: TurnLimits) -> None:
    """Append each sample's new model turn (cut to its token budget); the turn's
    calls wait in `pending` for the responder."""
    for k, i in enumerate(which):
        t = trajs[i]
        room = limits.max_total_tokens - len(t.ids)
        new, lps = list(out.response_ids[k][:room]), list(out.rollout_logprobs[k][:room])
        cut = len(new) < len(out.response_ids[k])
        t.ids += new
        t.model_mask += [True] * len(new)
        t.logprobs += lps
        t.turns += 1
        text = tok.decode(new, skip_special_tokens=True)
        calls = [] if cut else requests_in(text)
        t.messages.append({"role": "assistant", "content": text,
                           "tool_calls": [{"name": c.name, "arguments": c.arguments}
                                          for c in calls if not c.error]})
        if cut or out.finish_reason[k] == "length":
            t.finish_reason = "length"
        elif t.turns >= limits.max_turns:
            t.finish_reason = "stop"
        t.pending = [] if t.finish_reason else calls


def append(t: Trajectory, messages: list[dict], glue: ChatGlue, tok: Any,
           limits: TurnLimits) -> None:
    """Append messages (tool results, a user turn) after `t`'s model turn, as the
    template's glue; with no room for them and a turn after, `t` ends ("length")."""
    end = tok.decode(t.ids[-1:], skip_special_tokens=False)
    ids = glue.message_ids([{k: m[k] for k in ("role", "name", "content") if k in m}
                            for m in messages], end)
    if len(t.ids) + len(ids) >= limits.max_total_tokens:
        t.finish_reason = "length"
        return
    t.ids += ids
    t.model_mask += [False] * len(ids)
    t.logprobs += [0.0] * len(ids)
    t.messages += messages


@dataclass
class ToolResponder:
    """Stateless tools (`rollout.tools`): run every pending call of the batch in one
    `tools.run`; a turn without a call is the answer and ends its trajectory."""

    tools: ToolExecutor
    glue: ChatGlue

    def respond(self, trajs: list[Trajectory], tok: Any, limits: TurnLimits) -> None:
        for t in trajs:
            if not t.pending:
                t.finish_reason = "stop"
        waiting = [t for t in trajs if t.pending]
        results = self.tools.run([r for t in waiting for r in t.pending]) if waiting else []
        for t in waiting:
            calls, t.pending = t.pending, []
            mine, results = results[:len(calls)], results[len(calls):]
            t.tool_calls += sum(1 for c in calls if not c.error)
            t.tool_errors += sum(1 for r in mine if not r.ok)
            append(t, [{"role": "tool", "name": r.name, "content": r.content, "ok": r.ok}
                       for r in mine], self.glue, tok, limits)


def to_rollouts(trajs: Sequence[Trajectory], batch: PromptBatch, version: int,
                tool_seconds: float = 0.0) -> Rollouts:
    """Trajectories as `Rollouts`: the whole trajectory is the response, `model_mask` says
    which tokens the model sampled, `response_text` is the final answer."""
    return Rollouts(
        prompt_index=tuple(t.prompt_index for t in trajs), prompts=batch.prompts,
        prompt_ids=tuple(t.prompt_ids for t in trajs),
        response_ids=tuple(tuple(t.ids) for t in trajs),
        response_text=tuple(t.answer for t in trajs),
        rollout_logprobs=tuple(tuple(t.logprobs) for t in trajs),
        prefix_len=tuple(t.prefix_len for t in trajs),
        finish_reason=tuple(t.finish_reason for t in trajs),
        group_id=tuple(t.group_id for t in trajs), policy_version=version,
        model_mask=tuple(tuple(t.model_mask) for t in trajs),
        conversation=tuple(tuple(t.messages) for t in trajs), tool_seconds=tool_seconds)


def tool_metrics(ro: Rollouts) -> dict[str, float]:
    """`rollout/turns_mean`, `rollout/tool_calls_mean`, `rollout/tool_errors` (a count),
    `time/tools`; nothing for single-turn rollouts.

    >>> talk = ({"role": "assistant"}, {"role": "tool", "ok": False}, {"role": "assistant"})
    >>> ro = Rollouts((0,), (), ((1,),), ((2, 3),), ("",), ((0.0, 0.0),), (0,), ("stop",), (0,),
    ...               0, conversation=(talk,), tool_seconds=0.5)
    >>> tool_metrics(ro)
    {'rollout/turns_mean': 2.0, 'rollout/tool_calls_mean': 1.0, 'rollout/tool_errors': 1.0, 'time/tools': 0.5}
    """
    if not ro.conversation:
        return {}
    n = max(1, len(ro.conversation))
    said = [m for talk in ro.conversation for m in talk]
    return {"rollout/turns_mean": sum(m["role"] == "assistant" for m in said) / n,
            "rollout/tool_calls_mean": sum(m["role"] == "tool" for m in said) / n,
            "rollout/tool_errors": float(sum(m["role"] == "tool" and not m.get("ok", True)
                                             for m in said)),
            "time/tools": ro.tool_seconds}


class ToolTurns:
    """What a rollout worker holds for multi-turn rollouts: its tool processes, the
    template glue and the limits (`rollout.tools`, `rollout.max_turns`, ...)."""

    def __init__(self, settings: ToolSettings, tok: Any) -> None:
        self.tok = tok
        self.runner = ToolRunner(settings.refs, timeout_s=settings.timeout_s,
                                 max_chars=settings.max_chars, num_workers=settings.num_workers)
        self.glue = ChatGlue(tok, self.runner.schemas)
        self.limits = TurnLimits(settings.max_turns, settings.max_total_tokens)

    def generate(self, engine: Any, batch: PromptBatch, params: Any) -> Rollouts:
        version, spent = engine.policy_version, self.runner.seconds
        trajs = run_turns(engine, self.tok, batch, params, self.runner, self.glue, self.limits)
        return to_rollouts(trajs, batch, version, self.runner.seconds - spent)
