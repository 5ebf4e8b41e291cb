"""Environments: a plain Python class, one fresh instance per episode.

`rollout.env` names the class: a built-in (`bank`), an import path
(`my_env.py:Bank`, `pkg.mod:Bank`) or a skyrl-gym environment
(`skyrl_gym:<id>`, `rlft.envs.skyrl`). The instance is made from the row:
`cls(**row["env_args"])` (`env_args` may be renamed with `data.field_map`),
or `cls()` when the row has none. Two forms:

- *method form*: the class's public methods are the tools the model calls
  (schemas from type hints and docstrings, as for `rollout.tools`, or an
  explicit OpenAI list in the class attribute `tools` or the row's `tools`);
  state lives on the instance. A method that raises gives the model an error
  message. After a model turn without a call, the row's next `user_turns`
  entry comes in as a user message; with none left the episode ends.
- *protocol form*: the class defines `reset(row) -> messages` and
  `step(assistant_message) -> observation`; `reset`'s messages, when it returns
  any, replace the row's prompt. An observation is an `Observation`, or a dict
  / tuple `(messages, reward, done)`; its messages are `{"role": "user" |
  "tool", "content": text}` (a tool message may carry `name`).

The end state a reward reads (`state` in the reward's fields) is the
instance's `state()` when it has one, else its public attributes, as JSON.
Torch-free: the environment processes (`rlft.envs.host`) import this module.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlft.registry import Registry
from rlft.tools.base import schema_of
from rlft.tools.call import as_text

ENVS: Registry[type] = Registry("environment", builtins="rlft.envs")
PROTOCOL = ("reset", "step")
NOT_TOOLS = {"reset", "step", "state", "close"}  # methods of the protocol, never tools


@dataclass(frozen=True)
class Observation:
    """What the environment answers to one model turn."""

    messages: tuple[Mapping[str, Any], ...] = ()  # appended after the model's turn
    reward: float | None = None  # summed into the sample's reward as the term `env`
    done: bool = False
    error: str = ""  # set by the host when the environment failed (the episode ends)


def env_class(ref: str) -> type:
    """The class `ref` names: a built-in or an import path; errors name the fix."""

    if ref.startswith("skyrl_gym:"):  # the library's own registry (rlft/envs/skyrl.py)
        from rlft.envs.skyrl import skyrl_class

        return skyrl_class(ref.removeprefix("skyrl_gym:"))
    cls = ENVS.get(ref)
    if not inspect.isclass(cls):
        raise TypeError(f"rollout.env={ref!r} is a {type(cls).__name__}, not a class; name a "
                        f"class whose methods are the tools, or one with reset(row) and step(msg)")
    return cls


def is_protocol(cls: type) -> bool:
    return all(callable(getattr(cls, name, None)) for name in PROTOCOL)


def method_schemas(cls: type, explicit: Sequence[Mapping[str, Any]] | None = None
                   ) -> list[dict[str, Any]]:
    """The tools of a method-form class as OpenAI function specs ({"type": "function",
    "function": ...}): `explicit` (the row's `tools`), else the class's `tools`
    attribute, else one per public method, from its hints and docstring.

    >>> class Counter:
    ...     def add(self, k: int) -> int:
    ...         '''Add k to the counter.'''
    >>> [s["function"]["name"] for s in method_schemas(Counter)]
    ['add']
    """
    given = explicit or getattr(cls, "tools", None)
    if given:
        return [dict(s) if s.get("type") == "function" else {"type": "function", "function": dict(s)}
                for s in given]
    out = []
    for name, fn in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_") or name in NOT_TOOLS:
            continue
        try:
            schema = schema_of(fn, skip=("self",))
        except TypeError as exc:
            raise TypeError(f"environment {cls.__name__}: {exc}; or list the tools in the class "
                            f"attribute `tools` (OpenAI function form)") from None
        out.append({"type": "function", "function": schema})
    if not out:
        raise TypeError(f"environment {cls.__name__} has no public methods to offer as tools and "
                        f"no reset/step; add typed methods, or reset(row) and step(message)")
    return out


def make(cls: type, row: Mapping[str, Any]) -> Any:
    """A fresh instance for one episode: `cls(**row['env_args'])`, or `cls()`."""
    args = row.get("env_args")
    if isinstance(args, str):  # stored as a JSON string (Arrow holds no mixed objects)
        args = json.loads(args) if args.strip() else None
    if args is not None and not isinstance(args, Mapping):
        raise TypeError(f"the row's env_args must be a JSON object of {cls.__name__}'s "
                        f"arguments, got {type(args).__name__}")
    try:
        return cls(**(args or {}))
    except TypeError as exc:
        raise TypeError(f"{cls.__name__}(**env_args) failed ({exc}); give the row an env_args "
                        f"object with the class's arguments (or map a column to env_args with "
                        f"data.field_map)") from None


def state_of(instance: Any) -> Any:
    """The episode's end state as JSON: `state()` when defined, else public attributes.

    >>> class Box:
    ...     def __init__(self): self.items, self._cache = ["a"], {}
    >>> state_of(Box())
    {'items': ['a']}
    """
    fn = getattr(instance, "state", None)
    value = fn() if callable(fn) else {k: v for k, v in vars(instance).items()
                                       if not k.startswith("_")}
    return json.loads(json.dumps(value, default=repr))


def observation(value: Any, where: str, max_chars: int) -> Observation:
    """A `step` return value as an `Observation`, content bounded; a wrong shape raises
    a message that names `where` and the accepted forms.

    >>> observation(([{"role": "user", "content": "next"}], 1.0, False), "Game.step", 100)
    Observation(messages=({'role': 'user', 'content': 'next'},), reward=1.0, done=False, error='')
    """
    if isinstance(value, Observation):
        msgs, reward, done = value.messages, value.reward, value.done
    elif isinstance(value, Mapping):
        msgs, reward, done = value.get("messages", ()), value.get("reward"), value.get("done", False)
    elif isinstance(value, tuple) and len(value) == 3:
        msgs, reward, done = value
    else:
        raise TypeError(f"{where} returned {type(value).__name__}; return an Observation, a dict "
                        f"{{messages, reward, done}} or a tuple (messages, reward, done)")
    if (reward is not None and not isinstance(reward, (int, float))) or isinstance(reward, bool):
        raise TypeError(f"{where}: reward must be a number or None, got {type(reward).__name__}")
    return Observation(tuple(message(m, where, max_chars) for m in (msgs or ())),
                       None if reward is None else float(reward), bool(done))


def message(m: Any, where: str, max_chars: int) -> dict[str, Any]:
    """One observation message, its content as bounded text (JSON for a non-string)."""
    if isinstance(m, str):
        m = {"role": "user", "content": m}
    if not isinstance(m, Mapping) or m.get("role") not in ("user", "tool"):
        raise TypeError(f"{where}: a message must be {{'role': 'user' | 'tool', 'content': ...}}, "
                        f"got {str(m)[:80]!r}")
    out = {"role": m["role"], "content": as_text(m.get("content", ""), max_chars)}
    if m["role"] == "tool":
        out["name"] = str(m.get("name", "tool"))
    return out


@dataclass
class MethodEpisode:
    """The method form under the protocol: calls run the instance's methods; a turn
    without a call brings the row's next user turn, or ends the episode."""

    instance: Any
    names: frozenset[str]
    user_turns: list[str] = field(default_factory=list)
    max_chars: int = 1000

    def step(self, msg: Mapping[str, Any]) -> Observation:
        calls = msg.get("tool_calls") or []
        if not calls:
            if self.user_turns:
                return Observation(({"role": "user", "content": self.user_turns.pop(0)},))
            return Observation(done=True)
        return Observation(tuple(self._call(c) for c in calls))

    def _call(self, call: Mapping[str, Any]) -> dict[str, Any]:
        name, args = call.get("name", "?"), call.get("arguments")
        if call.get("error"):
            return {"role": "tool", "name": name, "content": f"Error: {call['error']}", "ok": False}
        if name not in self.names:
            why = f"unknown tool {name!r}; the tools are {', '.join(sorted(self.names))}"
        elif not isinstance(args, Mapping):
            why = f"the arguments of {name!r} must be a JSON object"
        else:
            try:
                out = as_text(getattr(self.instance, name)(**args), self.max_chars)
                return {"role": "tool", "name": name, "content": out, "ok": True}
            except MemoryError:  # the environment's failure, not the model's: the host ends it
                raise
            except Exception as exc:  # noqa: BLE001  (the model reads the error; the episode goes on)
                why = f"{type(exc).__name__}: {str(exc)[:300]}"
        return {"role": "tool", "name": name, "content": f"Error: {why}", "ok": False}


@dataclass
class ProtocolEpisode:
    """The protocol form: the instance's own `step`, its answer checked and bounded."""

    instance: Any
    max_chars: int = 1000

    def step(self, msg: Mapping[str, Any]) -> Observation:
        return observation(self.instance.step(msg), f"{type(self.instance).__name__}.step",
                           self.max_chars)


def start(cls: type, row: Mapping[str, Any], max_chars: int = 1000
          ) -> tuple[MethodEpisode | ProtocolEpisode, list, list[dict[str, Any]]]:
    """One episode from `row`, either form: (the episode, whose `step(message)` gives
    an `Observation` and whose `instance` holds the state; the messages `reset`
    returned, [] for none or the method form; the tools shown to the model)."""
    instance = make(cls, row)
    if is_protocol(cls):
        msgs = instance.reset(dict(row))
        if msgs is not None and not isinstance(msgs, (list, tuple)):
            raise TypeError(f"{cls.__name__}.reset returned {type(msgs).__name__}; return a "
                            f"list of messages, or None to keep the row's prompt")
        tools = getattr(cls, "tools", None)
        return (ProtocolEpisode(instance, max_chars), list(msgs or ()),
                method_schemas(cls, tools) if tools else [])
    schemas = method_schemas(cls, row.get("tools") or None)
    names = frozenset(sc["function"]["name"] for sc in schemas)
    return MethodEpisode(instance, names, user_turns(row), max_chars), [], schemas


def user_turns(row: Mapping[str, Any]) -> list[str]:
    """The row's later user turns (`user_turns`: a list of strings, or its JSON)."""
    turns = row.get("user_turns") or []
    if isinstance(turns, str):
        turns = json.loads(turns)
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise TypeError("the row's user_turns must be a list of strings (the user's later turns)")
    return list(turns)


def replay(cls: type, row: Mapping[str, Any], calls: Sequence[Sequence[Mapping[str, Any]]]
           ) -> Any:
    """The end state after running `calls` (a list of calls per user turn) on a fresh
    instance; a call that raises is skipped, as the model would read its error."""
    instance = make(cls, row)
    for turn in calls:
        for c in turn:
            try:
                getattr(instance, c["name"])(**(c.get("arguments") or {}))
            except Exception:  # noqa: BLE001,S112  (a failed reference call changes nothing)
                continue
    return state_of(instance)


def replay_conversation(cls: type, row: Mapping[str, Any], messages: Sequence[Mapping[str, Any]],
                        max_chars: int = 1000) -> tuple[Any, float | None, int]:
    """A recorded conversation's assistant turns played again on a fresh instance:
    (end state, summed step rewards or None, steps). Calls are read from each
    assistant message's `tool_calls` ({name, arguments}) or, failing those, from
    its text (`<tool_call>` blocks). For `rlft reward check --env`."""
    from rlft.rewards.tool_parse import parse_calls  # torch-free

    episode, _, _ = start(cls, row, max_chars)
    reward, steps = None, 0
    for m in messages:
        if m.get("role") != "assistant":
            continue
        calls = m.get("tool_calls") or [{"name": c.name, "arguments": c.arguments}
                                        for c in parse_calls(str(m.get("content", "")))]
        obs = episode.step({"role": "assistant", "content": m.get("content", ""),
                            "tool_calls": calls})
        steps += 1
        if obs.reward is not None:
            reward = (reward or 0.0) + obs.reward
        if obs.done:
            break
    return state_of(episode.instance), reward, steps
