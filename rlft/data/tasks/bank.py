"""`bank`: two user turns of banking requests, for `rollout.env=bank`.

Each row starts a `rlft.envs.bank.Bank` with two or three accounts
(`env_args`); the user asks for one operation (`prompt`), and after the
model's answer for another (`user_turns`). `reference_calls` holds the calls
that serve each turn, so `state_match` can replay them on a fresh bank and
compare end states. `demonstration_turns` is the whole exchange (call, tool
result, a short answer, the next user turn, ...) so SFT, CHORD or Prefix-RFT
can teach the call format; `tools` are the bank's methods, shown in the prompt.
A problem's split is fixed by a hash of its key.
"""

from __future__ import annotations

import copy
import json
import random

from rlft.data.tasks import TASKS, draw, split_of, split_size
from rlft.envs.bank import Bank
from rlft.envs.base import method_schemas

SYSTEM = ("You are a bank assistant. Serve each request with one tool call, then say "
          "'Done.' once you have the tool's result.")
NAMES = ["Ann", "Bob", "Cleo", "Dev", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jun"]
TOOLS = method_schemas(Bank)


def _op(rng: random.Random, accounts: dict[str, int], free: list[str]) -> tuple[str, dict]:
    """One request the bank can serve now, as (request text, call)."""
    kind = rng.choice(["deposit", "withdraw", "transfer", "open_account"])
    a, b = rng.sample(sorted(accounts), 2)
    amount = rng.randrange(5, 60, 5)
    if kind in ("withdraw", "transfer") and accounts[a] < 5:
        kind = "deposit"  # nothing to take out
    if kind == "deposit":
        return f"Please deposit {amount} dollars into {a}'s account.", \
            {"name": "deposit", "arguments": {"name": a, "amount": amount}}
    if kind == "withdraw":
        amount = min(amount, accounts[a] // 5 * 5)
        return f"{a} wants to withdraw {amount} dollars.", \
            {"name": "withdraw", "arguments": {"name": a, "amount": amount}}
    if kind == "transfer":
        amount = min(amount, accounts[a] // 5 * 5)
        return f"Transfer {amount} dollars from {a} to {b}.", \
            {"name": "transfer", "arguments": {"source": a, "target": b, "amount": amount}}
    new = free.pop()
    return f"Open an account for {new} with {amount} dollars.", \
        {"name": "open_account", "arguments": {"name": new, "deposit": amount}}


def _problem(seed: int) -> dict:
    rng = random.Random(seed)
    names = rng.sample(NAMES, 5)
    accounts = {n: rng.randrange(20, 200, 10) for n in names[:rng.choice([2, 3])]}
    free = [n for n in names if n not in accounts]
    bank, asks, calls, turns = Bank(dict(accounts)), [], [], []
    for _ in range(2):
        text, call = _op(rng, bank.accounts, free)
        result = getattr(bank, call["name"])(**call["arguments"])
        asks.append(text)
        calls.append([call])
        turns += [{"role": "assistant", "content": f"<tool_call>{json.dumps(call)}</tool_call>"},
                  {"role": "tool", "name": call["name"], "content": str(result)},
                  {"role": "assistant", "content": "Done."}]
    turns.insert(3, {"role": "user", "content": asks[1]})
    return {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": asks[0]}],
            "user_turns": asks[1:], "env_args": {"accounts": accounts},
            "reference_calls": calls, "answer": json.dumps(bank.state()),
            "tools": copy.deepcopy(TOOLS), "demonstration_turns": json.dumps(turns)}


@TASKS.register("bank")
def bank(split: str) -> list[dict]:
    """Rows of one split.

    >>> row = bank("eval")[0]
    >>> len(row["reference_calls"]), len(row["user_turns"]), row["tools"][0]["function"]["name"]
    (2, 1, 'balance')
    >>> all(json.loads(r['answer']) != {'accounts': r['env_args']['accounts']} for r in bank('eval'))
    True
    """
    n = split_size("bank", split)
    rows = [_problem(s) for s in range(8_000) if split_of(f"bank-{s}") == split]
    # Left out: requests that undo each other (doing nothing would match the reference).
    rows = [r for r in rows if json.loads(r["answer"]) != {"accounts": r["env_args"]["accounts"]}]
    return draw([rows], n, random.Random(11), "bank")
