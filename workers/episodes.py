"""Multi-turn rollouts in a stateful environment (`rollout.env`).

The same turn loop as tools (`rlft.workers.turns.continue_turns`); the
responder is the environment: every sample gets its own episode, made from
its row in an `EnvHost` process before the first turn. After each model turn
the episode's `step` answers (tool results, the next user turn) or ends it.
An episode whose `reset` returned messages starts from them instead of the
row's prompt (its own prompt tokens). At the end every episode's state is read
(`EpisodeEnd.state`) for the rewards, and the episode is closed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from rlft.data.chat_glue import ChatGlue
from rlft.envs.base import Observation
from rlft.envs.host import EnvHost, EnvSettings, Opened
from rlft.types import EpisodeEnd, Prompt, PromptBatch, Rollouts
from rlft.workers.turns import (
    Trajectory,
    TurnLimits,
    append,
    capped,
    continue_turns,
    next_turn,
    take_turn,
    to_rollouts,
    tool_metrics,
)


@dataclass
class EnvResponder:
    """Steps each waiting trajectory's episode with its last model turn: all at once
    (`respond`, the lockstep turn loop), or sent and applied as answers come
    (`send` / `apply`, the episode loop)."""

    host: EnvHost
    glue_of: Any  # episode -> ChatGlue
    errors: dict[int, str] = field(default_factory=dict)

    def respond(self, trajs: list[Trajectory], tok: Any, limits: TurnLimits) -> None:
        got = self.host.step([self._move(t) for t in trajs])
        for t in trajs:
            self.apply(t, got[t.episode], tok, limits)

    def send(self, trajs: list[Trajectory]) -> dict[int, Observation]:
        """Send the trajectories' moves; returns the ends of episodes already lost."""
        return self.host.send_steps([self._move(t) for t in trajs]) if trajs else {}

    def _move(self, t: Trajectory) -> tuple[int, dict]:
        calls = [{"name": c.name, "arguments": c.arguments, **({"error": c.error} if c.error
                                                                else {})} for c in t.pending]
        t.tool_calls += sum(1 for c in t.pending if not c.error)
        t.pending = []
        return t.episode, {"role": "assistant", "content": t.messages[-1]["content"],
                           "tool_calls": calls}

    def apply(self, t: Trajectory, obs: Observation, tok: Any, limits: TurnLimits) -> None:
        """The environment's answer to `t`'s turn: appended as glue, or the episode's end."""
        t.env_steps += 1
        t.tool_errors += sum(1 for m in obs.messages if m.get("ok") is False)
        if obs.reward is not None:
            t.env_reward = (t.env_reward or 0.0) + obs.reward
        if obs.error:
            self.errors[t.episode] = obs.error
        if obs.done or not obs.messages:  # nothing to answer: the episode is over
            t.messages += list(obs.messages)
            t.finish_reason = "stop"
            return
        append(t, list(obs.messages), self.glue_of(t.episode), tok, limits)


def episode_loop(engine: Any, tok: Any, batch: PromptBatch, params: Any,
                 trajs: list[Trajectory], first: Rollouts, resp: EnvResponder,
                 limits: TurnLimits) -> list[Trajectory]:
    """Each episode on its own clock: a trajectory whose environment has answered
    generates its next turn while slower environment steps go on in their
    processes. On an engine that streams (vLLM: `engine.stream()`,
    workers/vllm_stream.py) its request joins the running batch at the next
    engine step and comes back alone when done; elsewhere it goes in the next
    `generate` call with whatever others are ready then. Same tokens and masks
    as the lockstep loop; only which trajectories share an engine call differs."""
    take_turn(trajs, range(len(trajs)), first, tok, limits)
    at = {t.episode: i for i, t in enumerate(trajs)}
    ready: list[int] = []

    def settle(answers: dict[int, Observation]) -> None:
        for eid, obs in answers.items():
            resp.apply(trajs[at[eid]], obs, tok, limits)
            if not trajs[at[eid]].finish_reason:
                ready.append(at[eid])

    def took(live: list[int], out: Rollouts) -> None:
        take_turn(trajs, live, out, tok, limits)
        settle(resp.send([trajs[i] for i in live if not trajs[i].finish_reason]))

    settle(resp.send([t for t in trajs if not t.finish_reason]))
    with (engine.stream() if hasattr(engine, "stream") else nullcontext()) as stream:
        running: dict[str, int] = {}  # a streamed request -> its trajectory
        while ready or running or resp.host.pending():
            settle(resp.host.poll_steps(None if not (ready or running) else 0))
            settle(resp.host.poll_steps(0))  # everything that has arrived meanwhile goes too
            if ready:
                live, ready[:] = sorted(ready), []
                more = next_turn(batch, trajs, live, params, limits)
                if stream is None:
                    took(live, engine.generate(*more))
                else:
                    running.update(zip(stream.submit(*more), live))
            for rid, out in stream.poll() if running else ():
                took([running.pop(rid)], out)
    return trajs


class EnvTurns:
    """What a rollout worker holds for `rollout.env`: the environment processes,
    the tokenizer (for the chat template's glue) and the limits."""

    def __init__(self, settings: EnvSettings, limits: TurnLimits, tok: Any) -> None:
        self.tok, self.limits, self.s = tok, limits, settings
        self.host = EnvHost(settings)
        self._glues: dict[str, ChatGlue] = {}
        self._next = 0  # episode ids are never reused in a worker's life

    def _glue(self, tools: tuple) -> ChatGlue:
        key = json.dumps(tools, sort_keys=True)
        if key not in self._glues:
            self._glues[key] = ChatGlue(self.tok, list(tools) or None)
        return self._glues[key]

    def generate(self, engine: Any, batch: PromptBatch, params: Any) -> Rollouts:
        version, spent = engine.policy_version, self.host.seconds
        n, base = batch.n, self._next
        self._next += len(batch.prompts) * n
        rows = [{**p.fields, "prompt": p.text} for p in batch.prompts for _ in range(n)]
        opened = self.host.open(rows, first=base)
        params = capped(params, self.limits)
        if any(o.messages for o in opened):  # reset replaced some prompts: one request each
            batch = self._own_prompts(batch, opened)
            first = engine.generate(batch, params)
            eids = [base + first.prompt_index[b] for b in range(len(first))]
        else:
            first = engine.generate(batch, params)
            taken: dict[int, int] = defaultdict(int)
            eids = []
            for b in range(len(first)):
                p = first.prompt_index[b]
                eids.append(base + p * n + taken[p])
                taken[p] += 1
        trajs = [Trajectory(first.prompt_index[b], first.group_id[b], first.prompt_ids[b],
                            first.prefix_len[b], episode=eids[b]) for b in range(len(first))]
        tools = {e: opened[e - base].tools for e in eids}
        responder = EnvResponder(self.host, lambda e: self._glue(tools[e]))
        responder.errors.update({e: opened[e - base].error for e in eids if opened[e - base].error})
        loop = episode_loop if self.s.loop == "episode" else continue_turns
        trajs = loop(engine, self.tok, batch, params, trajs, first, responder, self.limits)
        states = self.host.close([t.episode for t in trajs])
        ro = to_rollouts(trajs, batch, version, self.host.seconds - spent)
        ends = tuple(EpisodeEnd(states.get(t.episode), t.env_reward, t.env_steps,
                                responder.errors.get(t.episode, "")) for t in trajs)
        return replace(ro, episodes=ends)

    def _own_prompts(self, batch: PromptBatch, opened: list[Opened]) -> PromptBatch:
        """One request per episode: `reset`'s messages rendered, or the row's prompt."""
        n, prompts, prefixes, groups = batch.n, [], [], []
        for i, p in enumerate(batch.prompts):
            for j in range(n):
                o = opened[i * n + j]
                ids = p.prompt_ids
                if o.messages:
                    text = self.tok.apply_chat_template(
                        list(o.messages), tools=list(o.tools) or None, add_generation_prompt=True,
                        tokenize=False)
                    ids = tuple(self.tok.encode(text, add_special_tokens=False))
                prompts.append(Prompt(p.uid, p.text, ids, p.fields))
                prefixes.append(batch.prefix_ids[i])
                groups.append(batch.group_id[i])
        return PromptBatch(tuple(prompts), tuple(prefixes), tuple(groups), n=1)

    def close(self) -> None:
        self.host.shutdown()


def env_metrics(ro: Rollouts, components: dict[str, float] | None = None) -> dict[str, float]:
    """`env/steps_mean`, `env/errors` (episodes an environment failure ended),
    `env/reward_mean` (where step rewards came), `env/state_match` (the share of
    episodes that ended in the reference state, from the `state_match` reward);
    nothing without `rollout.env`.

    >>> ro = Rollouts((0,), (), ((1,),), ((2,),), ("",), ((0.0,),), (0,), ("stop",), (0,), 0,
    ...               episodes=(EpisodeEnd({}, None, 3, "boom"),))
    >>> env_metrics(ro, {"state_match/exact": 0.5})
    {'env/steps_mean': 3.0, 'env/errors': 1.0, 'env/state_match': 0.5}
    """
    ends = [e for e in ro.episodes if e is not None]
    if not ends:
        return {}
    out = {"env/steps_mean": sum(e.steps for e in ends) / len(ends),
           "env/errors": float(sum(bool(e.error) for e in ends))}
    rewarded = [e.reward for e in ends if e.reward is not None]
    if rewarded:
        out["env/reward_mean"] = sum(rewarded) / len(rewarded)
    if components and "state_match/exact" in components:
        out["env/state_match"] = components["state_match/exact"]
    return out


def turn_metrics(ro: Rollouts, components: dict[str, float]) -> dict[str, float]:
    """Every multi-turn figure of a batch: `tool_metrics` and `env_metrics`."""
    return {**tool_metrics(ro), **env_metrics(ro, components)}
