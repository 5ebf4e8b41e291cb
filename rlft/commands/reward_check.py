"""`rlft reward check`: score completions with the real RewardService and show each sample.

Completions come from `--completions` (JSON lines with a `completion` field,
line i for row i) or else each row's `demonstration` (the built-in tasks have
one), so a reward can be checked before any model exists. Prompts are the
rows' messages joined as plain text: no tokenizer is loaded, so a reward that
reads `prompt` sees the messages, not the chat-templated text training passes.

Exit status: 0 when every sample scored, 1 when any sample failed (raised,
timed out or returned an invalid value), 2 when the reward, data or arguments
are unusable (unknown name, missing file, bad kwargs, a setup hook that fails).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlft.data.prompts import JSON_FIELDS, render_prompt
from rlft.data.sources import load_rows
from rlft.registry import RegistryError
from rlft.rewards.base import RewardTerm, term_labels
from rlft.rewards.runner import Outcome, describe
from rlft.types import Prompt, Rollouts

EPILOG = """examples:
  rlft reward check accuracy --data builtin:arithmetic --limit 5
  rlft reward check my_rewards.py:fn format --data rows.jsonl --completions out.jsonl
  rlft reward check my_rewards.py:fn --data rows.jsonl --workers 0   # see the reward's prints
"""


class CheckError(ValueError):
    """Unusable input: the message names it and the fix (exit status 2)."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rlft reward check", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Score completions with one or more rewards (summed, "
                                            "weight 1 each) and show every sample.")
    p.add_argument("rewards", nargs="+", metavar="REWARD",
                   help="a built-in name or an import path file.py:fn / pkg.mod:fn")
    p.add_argument("--data", required=True, help="FILE, FOLDER or builtin:TASK (as data.source)")
    p.add_argument("--completions", default=None,
                   help="JSON lines with a 'completion' field, line i for row i (default: each "
                        "row's 'demonstration')")
    p.add_argument("--split", default="train", help="split of a folder or built-in task")
    p.add_argument("--limit", type=int, default=100, help="score the first N rows (0: all)")
    p.add_argument("--workers", type=int, default=1,
                   help="reward processes, as reward.num_workers; 0 scores in this process, "
                        "serially, with no time limit and the reward's prints shown")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per reward call")
    p.add_argument("--kwargs", default="{}",
                   help="JSON object of keyword arguments for every reward, or a list of one "
                        "object per reward")
    ns = p.parse_args(list(argv))
    if ns.limit < 0 or ns.workers < 0 or not ns.timeout > 0:
        p.error("need --limit >= 0, --workers >= 0 and --timeout > 0")
    return ns


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


def read_completions(path: str) -> list[str]:
    lines = Path(path).expanduser().read_text().splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CheckError(f"--completions {path}: line {i} is not JSON ({exc})") from exc
        if not isinstance(record, Mapping) or not isinstance(record.get("completion"), str):
            raise CheckError(f"--completions {path}: line {i} needs a string 'completion' field, "
                             f"got {line[:80]!r}")
        out.append(record["completion"])
    return out


def build_rollouts(data: str, split: str, limit: int, completions: str | None) -> Rollouts:
    """One sample per row: the row as training would see it, plus its completion."""
    rows = load_rows(data, split)
    texts = read_completions(completions) if completions else None
    if texts is not None and len(texts) > len(rows):
        raise CheckError(f"--completions {completions} has {len(texts)} completions but {data} "
                         f"[{split}] has {len(rows)} rows; line i must answer row i")
    n = len(rows) if texts is None else len(texts)
    n = min(n, limit) if limit else n
    prompts, outs = [], []
    for i in range(n):
        row = rows[i]
        fields = _fields(row, f"{data} row {i}")
        if texts is not None:
            outs.append(texts[i])
        elif isinstance(fields.get("demonstration"), str):
            outs.append(fields["demonstration"])
        else:
            raise CheckError(f"{data} row {i} has no 'demonstration' to score; pass "
                             f"--completions FILE with one completion per row")
        prompts.append(Prompt(uid=f"{data} [{split}]#{i}", text=_prompt_text(row.get("prompt")),
                              prompt_ids=(), fields=fields))
    return Rollouts(prompt_index=tuple(range(n)), prompts=tuple(prompts), prompt_ids=((),) * n,
                    response_ids=((),) * n, response_text=tuple(outs),
                    rollout_logprobs=((),) * n, prefix_len=(0,) * n,
                    finish_reason=("stop",) * n, group_id=tuple(range(n)), policy_version=0)


def _fields(row: Mapping[str, Any], where: str) -> dict:
    """The row's fields as rewards get them: `schema`/`tools` JSON strings parsed."""
    out = {}
    for k, v in row.items():
        if k in JSON_FIELDS and isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError as exc:
                raise CheckError(f"{where}: field {k!r} is not valid JSON ({exc})") from exc
        if k != "prompt":
            out[k] = v
    return out


def _prompt_text(prompt: Any) -> str:
    """Messages joined as plain text (no tokenizer, so no chat template)."""
    if isinstance(prompt, list) and all(isinstance(m, Mapping) for m in prompt):
        return render_prompt([{**m, "content": str(m.get("content", ""))} for m in prompt], None)
    return "" if prompt is None else str(prompt)


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
        kwargs = term_kwargs(ns.kwargs, len(ns.rewards))
        terms = [RewardTerm(name, 1.0, kw) for name, kw in zip(ns.rewards, kwargs)]
        ro = build_rollouts(ns.data, ns.split, ns.limit, ns.completions)
    except (CheckError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        start = time.perf_counter()
        svc = RewardService(terms, num_workers=ns.workers, timeout_s=ns.timeout,
                            max_failure_frac=1.0)
    except (RegistryError, TypeError) as exc:  # unknown name, missing file, bad kwarg
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001  (a user file failed at import: say where)
        print(f"error: cannot load reward {' / '.join(ns.rewards)}: {describe(exc)}",
              file=sys.stderr)
        return 2
    startup = time.perf_counter() - start
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
    ok = report(ro, scored.rewards.tolist(), term_labels(terms), outcomes, scored.seconds)
    print("(in this process, serially)" if ns.workers == 0 else
          f"({ns.workers} reward process(es): starting them took {startup:.2f} s before "
          f"scoring, and the first batch also waits until they are ready)")
    return 0 if ok else 1
