"""Every `>>>` example in the package (rlft, rlft.workers, rlft.rewards) runs
and holds. Modules are found by walking the installed package, so a new
module's examples are collected without a list to update."""

import doctest
import importlib
import pkgutil

import pytest

# Modules whose import or examples need a package an install may lack run where it imports.
OPTIONAL = {"rlft.workers.vllm_engine": "vllm", "rlft.rewards.reasoning_gym": "reasoning_gym"}


def _modules() -> list[str]:
    # rlft.workers and rlft.rewards live in workers/ and rewards/ (pyproject's
    # package-dir), outside rlft/'s own folder: each is walked from its own path.
    names = set()
    for top in ("rlft", "rlft.workers", "rlft.rewards"):
        package = importlib.import_module(top)
        names |= {top} | {m.name for m in pkgutil.walk_packages(package.__path__, top + ".")}
    return sorted(names)


def test_the_walk_finds_every_part():
    names = _modules()
    for expected in ("rlft.loop", "rlft.algos.catalogue", "rlft.learner.driver",
                     "rlft.workers.learner", "rlft.rewards.tool_call", "rlft.data.tasks.arithmetic"):
        assert expected in names


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_the_reward_modules_keep_their_examples():
    """Each built-in reward documents itself with a runnable example."""
    for name in ("base", "accuracy", "format", "json_structure", "tool_call", "jsontext", "cosine",
                 "reasoning_gym"):
        module = importlib.import_module(f"rlft.rewards.{name}")
        assert doctest.testmod(module).attempted > 0, f"rlft.rewards.{name} has no >>> example"
