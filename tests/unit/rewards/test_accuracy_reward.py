"""`accuracy`: math-verify extraction on model-like text, and the string modes."""

import threading

import pytest

from rlft.rewards.accuracy import accuracy


@pytest.mark.parametrize("completion, answer, want", [
    ("The answer is 19.", "19", 1.0),                      # trailing period, prose
    ("12 + 7 = 19", "19", 1.0),                            # last number of an equation
    ("First 3, then 5, final answer 19", "19", 1.0),
    ("answer: 19\n\nHope this helps! 2", "19", 1.0),       # "answer" beats the later 2
    ("\\boxed{19}", "19", 1.0),
    ("So $x = \\frac{3}{4}$", "0.75", 1.0),                # fraction vs decimal
    ("The answer is -3.", "-3", 1.0),
    ("It's 19 (nineteen).", "19", 1.0),
    ("12 + 7 = 19. Then 19 - 2 = 17", "19", 0.0),          # the final number is what counts
    ("I think it is 9", "19", 0.0),
    ("no numbers here", "19", 0.0),                        # nothing to read: wrong, not an error
    ("", "19", 0.0),
    ("٣", "3", 0.0),                                       # non-ASCII digits are not read
])
def test_math_mode(completion, answer, want):
    assert accuracy(completion, answer=answer) == want


def test_math_mode_huge_output_still_reads_the_final_answer():
    text = "The quick brown fox 12 + 3 jumps. " * 30_000 + " So the answer is 19."  # ~1 MB
    assert len(text) > 1_000_000
    assert accuracy(text, answer="19") == 1.0


def test_math_mode_works_outside_the_main_thread():
    # math-verify's own SIGALRM timeouts would raise here; they are disabled.
    out = []
    t = threading.Thread(target=lambda: out.append(accuracy("so 7/2", answer="3.5")))
    t.start()
    t.join()
    assert out == [1.0]


def test_unreadable_reference_is_a_data_error_naming_the_field():
    with pytest.raises(ValueError, match="row's answer"):
        accuracy("19", answer="")


@pytest.mark.parametrize("mode, completion, answer, want", [
    ("exact", " 19 ", "19", 1.0),
    ("exact", "19.", "19", 0.0),
    ("normalized", "  New   York!", "new york", 1.0),
    ("normalized", "Café", "CAFÉ", 1.0),                  # unicode case folding
    ("normalized", "New Yorkshire", "new york", 0.0),
    ("choice", "The answer is (C).", "C", 1.0),
    ("choice", "answer: b", "B", 1.0),
    ("choice", "I think A is wrong, so D.", "D", 1.0),     # the pronoun "I" is not a choice
    ("choice", "B", "(B)", 1.0),
    ("choice", "The answer is (C).", "A", 0.0),
    ("choice", "none of them", "A", 0.0),
])
def test_string_modes(mode, completion, answer, want):
    assert accuracy(completion, answer=answer, mode=mode) == want


def test_no_reference_is_not_applicable_and_bad_mode_names_the_choices():
    assert accuracy("19", answer=None) is None
    with pytest.raises(ValueError, match="choices: math, exact, normalized, choice"):
        accuracy("19", answer="19", mode="fuzzy")
