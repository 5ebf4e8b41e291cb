"""The `reasoning-gym` library's procedural tasks as rows, and its entries as JSON.

Optional: `pip install -e ".[envs]"` (the `dev` extra includes it). Nothing
here imports the library until a row is built or an entry scored, so rlft
works without it.

Source: `data.source=reasoning_gym:<task>[?size=N&eval_size=M&seed=S]`, e.g.
`reasoning_gym:leg_counting?size=500`. `<task>` is one of the library's
registered dataset names (`sorted(reasoning_gym.factory.DATASETS)`), each with
its default config. Defaults: `size=2000` train rows, `eval_size=200` eval rows,
`seed=0`.

Splits `train` and `eval` come from one stream of entries,
`create_dataset(task, seed=S, size=...)`. Two seeds cannot separate them: the
library draws entry i from `Random(S + i)`, so seed S+1 gives seed S's entries
shifted by one. Instead each distinct question goes to one split by a stable
hash of its text (`rlft.data.tasks.split_of`, 1 in 10 to eval), as for the
built-in tasks: no question is in both splits, and the train size does not
change the eval rows. A split takes its first N distinct questions, scanning
at most 20 x N entries, so a task with a small problem space yields fewer.

Rows, as the library's own training scripts build them:
- `prompt`: chat messages, the library's default system prompt (think, then
  the final answer in `<answer>...</answer>` tags; `data.system_prompt`
  replaces it) and the question;
- `answer`: the entry's answer as a string; None for tasks that check an
  answer rather than compare it (graph_color, rubiks_cube, rush_hour, ...);
- `demonstration`: `<answer>ANSWER</answer>` where there is an answer (what
  `rlft reward check` scores when no completions are given);
- `rg_entry`: the whole entry, `encode_entry`d, for the `reasoning_gym` reward.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from types import ModuleType
from typing import Any

PREFIX = "reasoning_gym:"
PARAMS = {"size": 2000, "eval_size": 200, "seed": 0}
SPLITS = ("train", "eval")
SCAN = 20  # entries scanned per wanted row, at most (eval keeps ~1 in 10)
INSTALL = 'pip install -e ".[envs]" (or pip install reasoning-gym==0.1.25)'
LIST_NAMES = "python -c 'import reasoning_gym.factory as f; print(sorted(f.DATASETS))'"


class MissingLibrary(ImportError, ValueError):
    """reasoning-gym is not installed. Also a ValueError: the checks before a run
    (`rlft.run.preflight`, `rlft reward check`) report those as bad input, in one line."""


def library() -> ModuleType:
    """The `reasoning_gym` module, or MissingLibrary naming the extra to install."""
    try:
        import reasoning_gym
        import reasoning_gym.factory
        import reasoning_gym.utils  # noqa: F401  (SYSTEM_PROMPTS, extract_answer)
    except ImportError as exc:
        raise MissingLibrary(f"the reasoning-gym library is not installed; {INSTALL}") from exc
    return reasoning_gym


def parse_source(source: str) -> tuple[str, dict[str, int]]:
    """(task, {size, eval_size, seed}) from `reasoning_gym:<task>[?key=value&...]`.

    >>> parse_source("reasoning_gym:leg_counting?size=50")
    ('leg_counting', {'size': 50, 'eval_size': 200, 'seed': 0})
    >>> parse_source("reasoning_gym:leg_counting?sise=50")
    Traceback (most recent call last):
    ...
    ValueError: data.source='reasoning_gym:leg_counting?sise=50': unknown setting 'sise'; ...
    """
    task, _, query = source.removeprefix(PREFIX).partition("?")
    params = dict(PARAMS)
    for key, _, value in (part.partition("=") for part in query.split("&") if query):
        if key not in PARAMS:
            raise ValueError(f"data.source={source!r}: unknown setting {key!r}; settings: "
                             f"{', '.join(f'{k} (default {v})' for k, v in PARAMS.items())}")
        low = 0 if key == "seed" else 1
        if not (value.isascii() and value.isdigit()) or int(value) < low:
            raise ValueError(f"data.source={source!r}: {key}={value!r} must be a whole number "
                             f">= {low}")
        params[key] = int(value)
    return task, params


def check_task(source: str, split: str) -> tuple[str, dict[str, int]]:
    """The source's (task, params); errors for an unknown task or split, or no library."""
    task, params = parse_source(source)
    if split not in SPLITS:
        raise ValueError(f"data.source={source!r} has splits {', '.join(SPLITS)}, not "
                         f"{split!r}; set data.train_split / data.eval_split to one of them")
    names = library().factory.DATASETS
    if task == "composite":  # registered, but it needs a config naming the tasks it mixes
        raise ValueError(f"data.source={source!r}: composite is not supported as a source; "
                         f"name one task")
    if task not in names:
        close = difflib.get_close_matches(task, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"data.source={source!r}: reasoning-gym has no task {task!r}.{hint} "
                         f"It has {len(names)}, e.g. basic_arithmetic, leg_counting, "
                         f"spell_backward; list them with {LIST_NAMES}")
    return task, params


def build_rows(source: str, split: str) -> list[dict[str, Any]]:
    """The rows of one split (see the module docstring)."""
    from rlft.data.tasks import split_of  # the built-in tasks' hash split, same rule

    task, params = check_task(source, split)
    rg = library()
    want = params["size"] if split == "train" else params["eval_size"]
    try:
        ds = rg.create_dataset(task, seed=params["seed"], size=SCAN * want)
    except (AssertionError, TypeError, ValueError) as exc:  # the task's config.validate()
        raise ValueError(f"data.source={source!r}: reasoning-gym cannot build {task!r} with "
                         f"its default config ({type(exc).__name__}: {exc})") from exc
    system = rg.utils.SYSTEM_PROMPTS["default"]
    rows, seen = [], set()
    for i in range(len(ds)):
        entry = ds[i]
        question = entry["question"]
        if question in seen or split_of(question) != split:
            continue
        seen.add(question)
        answer = None if entry["answer"] is None else str(entry["answer"])
        rows.append({
            "prompt": [{"role": "system", "content": system},
                       {"role": "user", "content": question}],
            "answer": answer,
            "demonstration": None if answer is None else f"<answer>{answer}</answer>",
            "rg_entry": encode_entry(entry),
        })
        if len(rows) == want:
            break
    return rows


def encode_entry(entry: Any) -> str:
    """`entry` as JSON that `decode_entry` turns back into equal Python objects.

    Tuples and dicts with non-string keys are tagged: plain JSON would make
    them lists and string keys, and the library's scorers compare metadata
    as Python objects (arc_agi's expected grid is a tuple of tuples).

    >>> text = encode_entry({"grid": ((1, 2), (3, 4)), "colors": {0: "red"}, "ok": [True]})
    >>> text
    '{"grid": {"__tuple__": [{"__tuple__": [1, 2]}, {"__tuple__": [3, 4]}]}, "colors": {"__items__": [[0, "red"]]}, "ok": [true]}'
    >>> decode_entry(text) == {"grid": ((1, 2), (3, 4)), "colors": {0: "red"}, "ok": [True]}
    True
    """
    return json.dumps(_tag(entry))


def decode_entry(text: str) -> dict[str, Any]:
    """The entry `encode_entry` wrote (see there)."""
    return json.loads(text, object_hook=_untag)


def _tag(x: Any) -> Any:
    if isinstance(x, tuple):
        return {"__tuple__": [_tag(v) for v in x]}
    if isinstance(x, list):
        return [_tag(v) for v in x]
    if isinstance(x, dict):
        if all(isinstance(k, str) for k in x) and not {"__tuple__", "__items__"} & set(x):
            return {k: _tag(v) for k, v in x.items()}
        return {"__items__": [[_tag(k), _tag(v)] for k, v in x.items()]}
    return x


def _untag(d: dict) -> Any:
    if len(d) == 1 and "__tuple__" in d:
        return tuple(d["__tuple__"])
    if len(d) == 1 and "__items__" in d:
        return {k: v for k, v in d["__items__"]}  # a tuple key is back as a tuple: hashable
    return d


@cache
def scorer(task: str) -> Any:
    """The task's dataset object, whose `score_answer` scores; one per task and process.

    Its default config, as `build_rows` uses: the config can change scoring.
    """
    return library().create_dataset(task, seed=0, size=1)
