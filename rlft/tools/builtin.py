"""Built-in tools: `calculator` (arithmetic without `eval`) and `lookup` (a fact table).

`FACTS` is the table `builtin:tool_use` asks about: invented places with
invented figures, so that no model knows them and only `lookup` does.
"""

from __future__ import annotations

import ast
import operator
import random
from collections.abc import Callable
from typing import Any

from rlft.tools.base import tool

MAX_POWER = 64  # exponents above this make numbers no answer needs, at unbounded cost
MAX_DIGITS = 200
OPS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos,
}


@tool("calculator")
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (integers stay exact).

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "48213 * 7719"

    >>> calculator("48213 * 7719"), calculator("(2 + 3) / 4"), calculator("6 / 3")
    ('372156147', '1.25', '2')
    >>> calculator("__import__('os')")
    Traceback (most recent call last):
    ...
    ValueError: calculator: only numbers, + - * / // % ** and parentheses are allowed, not Call
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"calculator: {expression!r} is not an arithmetic expression "
                         f"({exc.msg})") from None
    value = _eval(tree.body)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return str(value)


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in OPS:
        return OPS[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_POWER:
            raise ValueError(f"calculator: exponent {right} is above {MAX_POWER}")
        out = OPS[type(node.op)](left, right)
        if isinstance(out, int) and len(str(abs(out))) > MAX_DIGITS:
            raise ValueError(f"calculator: the result has more than {MAX_DIGITS} digits")
        return out
    raise ValueError(f"calculator: only numbers, + - * / // % ** and parentheses are allowed, "
                     f"not {type(node).__name__}")


def _facts() -> dict[str, dict[str, str]]:
    """Invented towns with invented figures (seeded, so the table never changes)."""
    rng = random.Random(19)
    first = ("Vel", "Mor", "Quen", "Tal", "Ost", "Bra", "Cyr", "Dun", "Ell", "Fen", "Gar",
             "Hal", "Ith", "Jor")
    last = ("mora", "wick", "dale", "haven", "stead", "ford", "mere", "holt", "by", "combe")
    towns = sorted({a + b for a in first for b in last})
    return {t: {"population": str(rng.randrange(1_000, 900_000)),
                "founded": str(rng.randrange(1100, 1950)),
                "river": rng.choice(("Asten", "Bruel", "Corrin", "Dask", "Emmer", "Ford"))}
            for t in towns}


FACTS = _facts()


@tool("lookup")
def lookup(entity: str, attribute: str) -> str:
    """Look up a fact about a town: its population, founding year or river.

    Args:
        entity: the town's name, e.g. "Velmora"
        attribute: one of "population", "founded", "river"

    >>> lookup("Velmora", "founded") == FACTS["Velmora"]["founded"]
    True
    >>> lookup("Atlantis", "river")
    'no entry for "Atlantis"'
    """
    row = FACTS.get(entity.strip().title())
    if row is None:
        return f"no entry for {entity!r}".replace("'", '"')
    value = row.get(attribute.strip().lower())
    if value is None:
        return f"{entity} has no attribute {attribute!r}; known: {', '.join(sorted(row))}"
    return value
