"""Every `>>>` example in the reward modules runs and holds."""

import doctest
import importlib

import pytest

MODULES = ["base", "accuracy", "format", "json_structure", "tool_call", "jsontext", "cosine"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"rlft.rewards.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"rlft.rewards.{name} has no >>> example"
    assert result.failed == 0
