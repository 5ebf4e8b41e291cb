"""`rlft reward check`: score completions with the real RewardService and show each sample.

The rows are the ones training sees: the run's data settings come from
`--config FILE` and `key.sub=value` overrides, parsed as `rlft train` parses
them (`load_config`), `--data` being short for `data.source`; the rows are
loaded (`load_rows`) and renamed, parsed and checked (`build_prompts`:
`data.field_map`, `data.prompt_field`, `data.system_prompt`,
`data.on_bad_row`) by the code training uses. The rewards are the REWARD
names (weight 1 each, `--kwargs`) or, when none is named, the config's
`reward.terms` with their weights and kwargs.

Completions come from `--completions` (JSON lines with a `completion` field,
line i for row i) or else each row's `demonstration` (the built-in tasks have
one), so a reward can be checked before any model exists. With `--env CLASS`
(or the config's `rollout.env`) a sample is a recorded conversation instead:
the record's `conversation` (messages) or the row's `demonstration_turns`,
replayed on a fresh instance of the environment (`rlft.envs.base.
replay_conversation`), so rewards see its end `state` as in training. Prompts are the
rows' messages joined as plain text: no tokenizer is loaded, so a reward that
reads `prompt` sees the messages, not the chat-templated text training passes.

Before scoring, a warning (stderr) names each row field a reward declares it
reads and no row has, with the `data.field_map` that would fix it
(`rlft.rewards.fields`); `rlft train` logs the same warnings.

Exit status: 0 when every sample scored, 1 when any sample failed (raised,
timed out or returned an invalid value), 2 when the reward, data, config or
arguments are unusable (unknown name, missing file, bad kwargs, a setup hook
that fails).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rlft.config import ConfigError, load_config
from rlft.config.schema import DataConfig
from rlft.data.prompts import build_prompts
from rlft.data.sources import load_rows
from rlft.registry import RegistryError
from rlft.rewards.base import RewardTerm, term_labels
from rlft.rewards.fields import field_warnings
from rlft.rewards.runner import Outcome, describe
from rlft.run.preflight import check_rewards
from rlft.types import Rollouts

EPILOG = """examples:
  rlft reward check accuracy --data builtin:arithmetic --limit 5
  rlft reward check reasoning_gym --data reasoning_gym:leg_counting --limit 5
  rlft reward check my_rewards.py:fn format --data rows.jsonl --completions out.jsonl
  rlft reward check tool_call --data tools.jsonl --completions c.jsonl \\
      "data.field_map={reference_call: answer}"      # any data.* setting, as rlft train takes it
  rlft reward check --config run.yaml --completions c.jsonl   # the run's rewards on its rows
  rlft reward check my_rewards.py:fn --data rows.jsonl --workers 0   # see the reward's prints
  rlft reward check state_match --data builtin:bank --env bank      # recorded conversations
"""


class CheckError(ValueError):
    """Unusable input: the message names it and the fix (exit status 2)."""


@dataclass(frozen=True)
class Plan:
    """What to check: the terms, the data settings and split, and how to score."""

    terms: list[RewardTerm]
    data: DataConfig
    split: str
    workers: int
    timeout: float
    env: str = ""  # replay recorded conversations on this environment


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rlft reward check", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Score completions with one or more rewards (summed) "
                                            "on the rows training sees, and show every sample.")
    p.add_argument("items", nargs="*", metavar="REWARD | key.sub=value",
                   help="a built-in name or an import path file.py:fn / pkg.mod:fn; and config "
                        "overrides as rlft train takes them, e.g. data.field_map={gold: answer}")
    p.add_argument("--config", default=None, help="a run config YAML: its data.* settings "
                   "apply, and its reward.terms when no REWARD is named")
    p.add_argument("--data", default=None,
                   help="FILE, FOLDER, builtin:TASK or reasoning_gym:TASK (data.source)")
    p.add_argument("--completions", default=None,
                   help="JSON lines with a 'completion' field, line i for row i (default: each "
                        "row's 'demonstration')")
    p.add_argument("--env", default=None,
                   help="an environment (rollout.env): replay each conversation on it and score "
                        "its end state (records with 'conversation', else demonstration_turns)")
    p.add_argument("--split", default=None, help="split of a folder or built-in task "
                   "(default: data.train_split)")
    p.add_argument("--limit", type=int, default=100, help="score the first N rows (0: all)")
    p.add_argument("--workers", type=int, default=None,
                   help="reward processes (default: reward.num_workers, 1); 0 scores in this "
                        "process, serially, with no time limit and the reward's prints shown")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per reward call (default: reward.timeout_s, 10)")
    p.add_argument("--kwargs", default=None,
                   help="JSON object of keyword arguments for every REWARD, or a list of one "
                        "object per REWARD")
    ns = p.parse_intermixed_args(list(argv))  # overrides may follow the options
    ns.rewards = [i for i in ns.items if "=" not in i]
    ns.overrides = [i for i in ns.items if "=" in i]
    keys = {o.partition("=")[0].strip() for o in ns.overrides}
    if (ns.limit < 0 or (ns.workers is not None and ns.workers < 0)
            or (ns.timeout is not None and not ns.timeout > 0)):
        p.error("need --limit >= 0, --workers >= 0 and --timeout > 0")
    if not (ns.rewards or ns.config or "reward.terms" in keys):
        p.error("name a REWARD, or give --config FILE (or reward.terms=...) to check a run's "
                "rewards")
    if not (ns.data or ns.config or "data.source" in keys):
        p.error("name the data: --data FILE|FOLDER|builtin:TASK, data.source=..., or "
                "--config FILE")
    if ns.kwargs is not None and not ns.rewards:
        p.error("--kwargs goes with REWARD names; the config's reward.terms carry their own")
    return ns


def plan_check(ns: argparse.Namespace) -> Plan:
    """The config (file + overrides, validated as for `rlft train`) turned into a Plan."""
    cfg = load_config(ns.config, ns.overrides)
    if ns.rewards:
        kwargs = term_kwargs(ns.kwargs or "{}", len(ns.rewards))
        terms = [RewardTerm(name, 1.0, kw) for name, kw in zip(ns.rewards, kwargs)]
    else:
        terms = [RewardTerm(t.name, t.weight, dict(t.kwargs)) for t in cfg.reward.terms]
    data = replace(cfg.data, source=ns.data) if ns.data else cfg.data
    env = ns.env or cfg.rollout.env
    if env:  # state_match replays on the same environment, as in training
        terms = [replace(t, kwargs={"env": env, **t.kwargs}) if t.name == "state_match" else t
                 for t in terms]
    return Plan(terms, data, ns.split or data.train_split,
                cfg.reward.num_workers if ns.workers is None else ns.workers,
                cfg.reward.timeout_s if ns.timeout is None else ns.timeout, env)


def term_kwargs(text: str, n: int) -> list[dict]:
    """`--kwargs` as one dict per reward."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckError(f"--kwargs is not valid JSON ({exc}); e.g. --kwargs "
                         f"'{{\"mode\": \"exact\"}}'") from exc
    if isinstance(value, Mapping):
        value = [value] * n
    if not (isinstance(value, list) and len(value) == n
            and all(isinstance(v, Mapping) for v in value)):
        raise CheckError(f"--kwargs must be a JSON object, or a list of {n} objects (one per "
                         f"reward); got {text[:80]!r}")
    return [dict(v) for v in value]


def read_records(path: str) -> list[tuple[int, dict]]:
    """(line number, JSON object) for each line of a JSON-lines file; errors name the line."""
    out = []
    for i, line in enumerate(Path(path).expanduser().read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CheckError(f"--completions {path}: line {i} is not JSON ({exc})") from exc
        if not isinstance(record, Mapping):
            raise CheckError(f"--completions {path}: line {i} is not a JSON object, got "
                             f"{line[:80]!r}")
        out.append((i, dict(record)))
    return out


def with_episodes(ro: Rollouts, env: str, records: list[dict] | None) -> Rollouts:
    """Each sample's conversation replayed on `env`: conversation, answer and end state."""
    from rlft.envs.base import env_class, replay_conversation
    from rlft.types import EpisodeEnd

    cls = env_class(env)
    talks, ends, answers = [], [], []
    for b in range(len(ro)):
        p = ro.row(b)
        row = int(p.uid.rpartition("#")[2])
        talk = records[row].get("conversation") if records else p.fields.get("demonstration_turns")
        if isinstance(talk, str):
            talk = json.loads(talk)
        if not isinstance(talk, list):
            raise CheckError(f"{p.uid}: --env needs a conversation: a 'conversation' list in its "
                             f"--completions record, or the row's demonstration_turns")
        state, reward, steps = replay_conversation(cls, {**p.fields, "prompt": p.text}, talk)
        said = [m.get("content", "") for m in talk if m.get("role") == "assistant"]
        talks.append(tuple(talk))
        ends.append(EpisodeEnd(state, reward, steps))
        answers.append(said[-1] if said else "")
    return replace(ro, conversation=tuple(talks), episodes=tuple(ends),
                   response_text=tuple(answers))


def read_completions(path: str) -> list[str]:
    out = []
    for i, record in read_records(path):
        if not isinstance(record.get("completion"), str):
            raise CheckError(f"--completions {path}: line {i} needs a string 'completion' field, "
                             f"got {json.dumps(record)[:80]!r}")
        out.append(record["completion"])
    return out


def build_rollouts(data: DataConfig, split: str, limit: int, completions: str | None,
                   records: int = 0) -> Rollouts:
    """One sample per row: the row as training would see it, plus its completion
    (`records` > 0: that many rows, whose samples `with_episodes` fills in)."""
    rows = load_rows(data.source, split)
    texts = read_completions(completions) if completions else ([""] * records or None)
    if texts is not None and len(texts) > len(rows):
        raise CheckError(f"--completions {completions} has {len(texts)} completions but "
                         f"{data.source} [{split}] has {len(rows)} rows; line i must answer row i")
    n = len(rows) if texts is None else len(texts)
    n = min(n, limit) if limit else n
    found = build_prompts(rows.select(range(n)), None, prompt_field=data.prompt_field,
                          field_map=data.field_map, system_prompt=data.system_prompt,
                          on_bad_row=data.on_bad_row, source_name=f"{data.source} [{split}]")
    if found.skipped:
        print(f"skipped {found.skipped} malformed rows of {data.source} "
              f"({dict(found.skipped_reasons)}), as data.on_bad_row=skip says", file=sys.stderr)
    outs = []
    for p in found.prompts:
        row = int(p.uid.rpartition("#")[2])  # uids are "<source> [<split>]#<row number>"
        if texts is not None:
            outs.append(texts[row])
        elif isinstance(p.fields.get("demonstration"), str) or "demonstration_turns" in p.fields:
            outs.append(p.fields.get("demonstration", ""))
        else:
            raise CheckError(f"{p.uid} has no 'demonstration' to score; pass --completions "
                             f"FILE with one completion per row, or map the column that holds "
                             f"one: data.field_map={{<column>: demonstration}}")
    n = len(outs)
    return Rollouts(prompt_index=tuple(range(n)), prompts=found.prompts, prompt_ids=((),) * n,
                    response_ids=((),) * n, response_text=tuple(outs),
                    rollout_logprobs=((),) * n, prefix_len=(0,) * n,
                    finish_reason=("stop",) * n, group_id=tuple(range(n)), policy_version=0)


def _num(v: float | None) -> str:
    return "None" if v is None else f"{v:.4g}"


def sample_line(uid: str, total: float, labels: list[str], outs: Sequence[Outcome]) -> str:
    parts, failure = [], ""
    for label, o in zip(labels, outs):
        if o.kind != "ok":
            parts.append(f"{label}=FAILED")
            failure = failure or f"{o.kind}: {o.message}"
            continue
        parts.append(f"{label}={_num(o.total)}")
        parts.extend(f"{label}/{k}={_num(v)}" for k, v in o.parts.items())
    return f"{uid:<30} {total:>8.4g}  {' '.join(parts):<40} {failure}".rstrip()


def report(ro: Rollouts, rewards: Sequence[float], labels: list[str],
           outcomes: list[tuple[Outcome, ...]], seconds: float) -> bool:
    """Print the table and the summary; True when no sample failed."""
    print(f"{'uid':<30} {'total':>8}  {'components':<40} failure")
    for b, outs in enumerate(outcomes):
        print(sample_line(ro.row(b).uid, rewards[b], labels, outs))
    B = len(outcomes)
    bad = [b for b, outs in enumerate(outcomes) if any(o.kind != "ok" for o in outs)]
    kinds = Counter(next(o.kind for o in outcomes[b] if o.kind != "ok") for b in bad)
    ok = [outs for outs in outcomes if all(o.kind == "ok" for o in outs)]
    none_all = sum(all(o.total is None for o in outs) for outs in ok)
    print(f"\n{B} samples: mean total {math.fsum(rewards) / max(B, 1):.4g} (failures scored as "
          f"the fallback 0); all terms None on {none_all / max(B, 1):.1%}")
    for j, label in enumerate(labels):  # each term on its own, whatever the others did
        vals = [outs[j].total for outs in outcomes if outs[j].kind == "ok"]
        got = [v for v in vals if v is not None]
        mean = f"{math.fsum(got) / len(got):.4g}" if got else "n/a"
        print(f"  {label}: mean {mean} over {len(got)} scored, None on "
              f"{(len(vals) - len(got)) / max(B, 1):.1%}, failed on {B - len(vals)}")
    by_kind = ", ".join(f"{k}={kinds[k]}" for k in ("raised", "timeout", "invalid"))
    uids = ", ".join(ro.row(b).uid for b in bad[:5]) + (", ..." if len(bad) > 5 else "")
    print(f"failed samples: {len(bad)} ({by_kind}){': ' + uids if bad else ''}")
    print(f"time: {seconds:.3f} s scoring, {seconds / max(B, 1) * 1e3:.2f} ms/sample")
    return not bad


def main(argv: Sequence[str]) -> int:
    from rlft.workers.reward import RewardFailureError, RewardService  # imports torch

    ns = parse_args(argv)
    try:
        plan = plan_check(ns)
        check_rewards(plan.terms, label="REWARD")  # as rlft train checks (InputError: exit 2)
        if plan.env:
            records = [r for _, r in read_records(ns.completions)] if ns.completions else None
            ro = build_rollouts(plan.data, plan.split, ns.limit, None, len(records or []))
            ro = with_episodes(ro, plan.env, records)
        else:
            ro = build_rollouts(plan.data, plan.split, ns.limit, ns.completions)
    except (CheckError, ConfigError, OSError, ValueError, TypeError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = " / ".join(t.name for t in plan.terms)
    try:
        start = time.perf_counter()
        svc = RewardService(plan.terms, num_workers=plan.workers, timeout_s=plan.timeout,
                            max_failure_frac=1.0)
    except (RegistryError, TypeError) as exc:  # unknown name, missing file, bad kwarg
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001  (a user file failed at import: say where)
        print(f"error: cannot load reward {names}: {describe(exc)}", file=sys.stderr)
        return 2
    startup = time.perf_counter() - start
    for warning in field_warnings(plan.terms, [p.fields for p in ro.prompts],
                                  plan.data.field_map):
        print(f"warning: {warning}", file=sys.stderr)
    try:
        scored, outcomes = svc.score_outcomes(ro)
    except RewardFailureError as exc:  # a reward process could not start (setup hook)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001  (with --workers 0 a setup hook raises here)
        print(f"error: the reward's setup failed: {describe(exc)}", file=sys.stderr)
        return 2
    finally:
        svc.close()
    ok = report(ro, scored.rewards.tolist(), term_labels(plan.terms), outcomes, scored.seconds)
    print("(in this process, serially)" if plan.workers == 0 else
          f"({plan.workers} reward process(es): starting them took {startup:.2f} s before "
          f"scoring, and the first batch also waits until they are ready)")
    return 0 if ok else 1
