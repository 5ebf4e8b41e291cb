"""Every `rlft train|sft|eval` command shown in the docs (README.md, docs/*.md)
still loads its configuration: the config file exists and every key=value
override names a current key with a valid value. No model runs: only
`load_config`, so a renamed key or a changed value fails here, not in a reader's
terminal."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from rlft.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SUBCOMMANDS = {"train", "sft", "eval"}
# Flags of rlft/cli.py and rlft/commands/{sft,evaluate}.py: those that take a value
# (the next word, or --flag=value) and those that stand alone.
VALUE_FLAGS = {"--resume", "--k", "--limit", "--out"}
BARE_FLAGS = {"--print-config", "--verbose", "--debug"}
SEPARATORS = {"&&", "||", ";", "|", "--"}  # `ray job submit ... -- rlft train ...`
# A transcript's command followed by this line is documented to fail in load_config
# (errors-and-logs.md's `rlft train bad.yaml`); a plain `error:` comes later (preflight),
# so those commands' configs are checked like any other.
DOCUMENTED_ERROR = "config error:"


def doc_lines(path: Path):
    """(line number, logical line, the line after it) for each fenced code block line;
    `\\`-continued lines joined, a `$ ` prompt dropped."""
    lines, in_block, out = path.read_text().splitlines(), False, []
    i = 0
    while i < len(lines):
        start, text = i + 1, lines[i]
        if text.lstrip().startswith("```"):
            in_block, i = not in_block, i + 1
            continue
        i += 1
        if not in_block:
            continue
        while text.rstrip().endswith("\\") and i < len(lines):
            text, i = text.rstrip()[:-1] + " " + lines[i], i + 1
        nxt = lines[i] if i < len(lines) else ""
        out.append((start, text.strip().removeprefix("$ "), nxt.strip()))
    return out


def find_command(words: list[str]) -> tuple[str, list[str]] | None:
    """(subcommand, its arguments) of the first rlft train|sft|eval in `words`,
    as `rlft`, `.venv/bin/rlft` or `python -m rlft.cli`."""
    for i, w in enumerate(words):
        if w.split("/")[-1] == "rlft" and words[i + 1:i + 2] and words[i + 1] in SUBCOMMANDS:
            return words[i + 1], words[i + 2:]
        if words[i:i + 2] == ["-m", "rlft.cli"] and words[i + 2:i + 3] and words[i + 2] in SUBCOMMANDS:
            return words[i + 2], words[i + 3:]
    return None


def segments(words: list[str]) -> list[list[str]]:
    """The words between shell separators (`cmd && rlft train ...`)."""
    out: list[list[str]] = [[]]
    for w in words:
        if w in SEPARATORS:
            out.append([])
        else:
            out[-1].append(w.removesuffix(";"))
    return out


def positionals(args: list[str]) -> list[str]:
    """The arguments minus the flags (and the values of those that take one)."""
    items, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in VALUE_FLAGS:
            skip = True
        elif a in BARE_FLAGS or a.split("=")[0] in VALUE_FLAGS:
            pass
        elif a.startswith("--"):
            raise ValueError(f"unknown flag {a!r} (not in rlft/cli.py or rlft/commands)")
        else:
            items.append(a)
    return items


def test_documented_commands_load_their_config(monkeypatch):
    monkeypatch.chdir(ROOT)  # the docs' paths (launch/configs/...) start at the repo root
    checked, skipped, failures = 0, {"placeholder": 0, "run folder": 0, "documented error": 0}, []
    for path in DOCS:
        for line, text, nxt in doc_lines(path):
            where = f"{path.relative_to(ROOT)}:{line}: {text}"
            if not re.search(r"rlft(\.cli)?\s+(train|sft|eval)\b", text):
                continue
            try:
                words = shlex.split(text, comments=True)
            except ValueError as exc:  # unbalanced quotes in a command line
                failures.append(f"{where}\n    {exc}")
                continue
            for seg in segments(words):
                found = find_command(seg)
                if found is None:
                    continue
                if any("<" in w or ">" in w or "..." in w for w in found[1]):
                    skipped["placeholder"] += 1  # `runs/<run>`, usage lines: not literal
                    continue
                if nxt.startswith(DOCUMENTED_ERROR):
                    skipped["documented error"] += 1  # the example is of the error itself
                    continue
                try:
                    items = positionals(found[1])
                    if items and "=" not in items[0] and not items[0].endswith((".yaml", ".yml")):
                        skipped["run folder"] += 1  # its config.yaml exists only after a run
                        continue
                    cfg_path = items[0] if items and "=" not in items[0] else None
                    load_config(cfg_path, items[1:] if cfg_path else items)
                    checked += 1
                except Exception as exc:  # ConfigError, a bad flag, ...: all are listed below
                    failures.append(f"{where}\n    {type(exc).__name__}: {exc}")
    assert not failures, "documented commands whose config no longer loads:\n" + "\n".join(failures)
    # A floor, so a parser that finds nothing cannot pass (23 when written).
    assert checked >= 20, f"only {checked} documented commands checked; skipped {skipped}"
