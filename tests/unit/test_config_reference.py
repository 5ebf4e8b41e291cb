"""docs/config-reference.md is generated from the config fields' help texts
(`rlft config --markdown`); the committed page must be what they give today."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from rlft.cli import main
from rlft.config import Config, describe
from rlft.config.reference import markdown

PAGE = Path(__file__).resolve().parents[2] / "docs" / "config-reference.md"
REGENERATE = ".venv/bin/rlft config --markdown > docs/config-reference.md"


def test_committed_reference_is_current():
    assert PAGE.read_text() == markdown(), (
        f"docs/config-reference.md is stale (a config field or its help changed); regenerate it: {REGENERATE}")


def test_cli_prints_the_page():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["config", "--markdown"]) == 0
    assert out.getvalue() == markdown()


def test_every_key_has_its_row():
    page = markdown()
    for path, _, _ in describe(Config):
        assert f"| `{path}` |" in page
    sections = [line[3:] for line in page.splitlines() if line.startswith("## ")]
    assert sections == ["model", "data", "rollout", "reward", "algo", "train", "sft", "checkpoint",
                        "logging", "ray"]
