"""`format`: the default think-then-answer shape and custom patterns."""

import pytest

from rlft.rewards.format import format_reward


@pytest.mark.parametrize("completion, want", [
    ("<think>12 + 7</think>\n19", 1.0),
    ("  <think>a\nb</think> The answer is 19.", 1.0),      # newlines inside the thought
    ("<think>12 + 7</think>", 0.0),                        # no answer after it
    ("19 <think>late</think> 19", 0.0),                    # must start with the thought
    ("<think>unclosed 19", 0.0),
    ("<think>ünïcödé 🤔</think> 答案 19", 1.0),
    ("", 0.0),
])
def test_default_pattern(completion, want):
    assert format_reward(completion) == want


def test_huge_output_is_linear_enough():
    text = "<think>" + "x" * 1_000_000 + "</think> 19"
    assert format_reward(text) == 1.0
    assert format_reward(text[:-3]) == 0.0


def test_custom_pattern_full_and_search():
    assert format_reward("Answer: 19", pattern=r"Answer: \d+") == 1.0
    assert format_reward("So. Answer: 19", pattern=r"Answer: \d+") == 0.0
    assert format_reward("So. Answer: 19", pattern=r"Answer: \d+", search=True) == 1.0


def test_bad_regex_names_the_kwarg():
    with pytest.raises(ValueError, match="kwargs pattern"):
        format_reward("x", pattern="(")
