"""`reasoning_gym`: rlft's reward is the library's own scorer, entry by entry.

Each case scores a completion the way the library's training scripts do
(`extract_answer`, then the task's `score_answer` on the library's own entry,
not a copy) and asserts rlft's reward, which only sees the row's `rg_entry`
JSON, gives the same float.
"""

import pytest

rg = pytest.importorskip("reasoning_gym")
from reasoning_gym.utils import extract_answer  # noqa: E402

from rlft.data.reasoning_gym import decode_entry, encode_entry  # noqa: E402
from rlft.rewards.base import resolve  # noqa: E402
from rlft.rewards.reasoning_gym import reasoning_gym  # noqa: E402

# Arithmetic, counting, string and sorting tasks; rearc's expected grid is a
# tuple of tuples (a plain JSON round trip would grade correct grids 0.05);
# graph_color has int dict keys and no single answer (its scorer checks one).
TASKS = ("basic_arithmetic", "chain_sum", "leg_counting", "letter_counting",
         "spell_backward", "word_sorting", "rearc", "graph_color")
N = 25  # entries per task


def completions(answer: str | None) -> dict[str, str]:
    """Model-like texts: right in the asked format, and several ways of wrong."""
    out = {"no tags": f"I think it is {answer}.", "empty": "",
           "wrong": "Let me think.\n<answer>zebra 17</answer>",
           "empty tags": "<answer></answer>"}
    if answer is not None:
        out |= {
            "right": f"Let me work it out step by step.\n<answer>{answer}</answer>",
            "right, spaced": f"<answer>\n{answer}\n</answer>",
            "right then wrong": f"<answer>{answer}</answer> no wait <answer>0</answer>",
            "wrong then right": f"<answer>0</answer> no wait <answer>{answer}</answer>",
            "extra text": f"<answer>{answer} (final)</answer>",  # partial credit in some scorers
            "bare answer": str(answer),
        }
    return out


@pytest.fixture(scope="module", params=TASKS)
def task_entries(request):
    ds = rg.create_dataset(request.param, seed=7, size=N)
    return request.param, ds, [ds[i] for i in range(N)]


def test_reward_equals_the_library_score_on_every_entry(task_entries):
    task, ds, entries = task_entries
    checked = right = 0
    for entry in entries:
        row = encode_entry(entry)
        for kind, text in completions(entry["answer"]).items():
            want = float(ds.score_answer(extract_answer(text), entry))
            got = reasoning_gym(text, rg_entry=row, answer=entry["answer"])
            assert got == want, f"{task} {kind}: rlft {got} != library {want} on {text[:80]!r}"
            checked += 1
            right += kind == "right" and got == 1.0
    assert checked >= 4 * N
    if entries[0]["answer"] is not None:  # the right answer in tags scores full marks
        assert right == N, f"{task}: the right answer scored 1.0 on {right} of {N} entries"


def test_the_entry_codec_keeps_python_types(task_entries):
    """Tuples stay tuples and int keys ints: the scorers compare these objects."""
    _, _, entries = task_entries
    for entry in entries:
        back = decode_entry(encode_entry(entry))
        assert back == entry and repr(back) == repr(entry)


def test_a_plain_json_round_trip_would_change_rearc_scores():
    """Why rg_entry is tagged JSON: with lists for tuples, correct grids score 0.05."""
    import json

    ds = rg.create_dataset("rearc", seed=7, size=3)
    entry = ds[0]
    plain = json.loads(json.dumps(entry))
    assert ds.score_answer(entry["answer"], entry) == 1.0
    assert ds.score_answer(entry["answer"], plain) < 1.0
    assert reasoning_gym(f"<answer>{entry['answer']}</answer>", rg_entry=encode_entry(entry)) \
        == 1.0


def test_registered_as_a_builtin_reading_rg_entry():
    fn = resolve("reasoning_gym")
    assert fn is reasoning_gym and fn.rlft_reads == ("rg_entry",)
    assert fn("<answer>1</answer>", answer="1") is None  # a row from another source


def test_an_entry_without_its_task_names_the_fix():
    with pytest.raises(ValueError, match="reasoning_gym:<task>"):
        reasoning_gym("<answer>1</answer>", rg_entry=encode_entry({"answer": "1", "metadata": {}}))


def test_reward_check_scores_the_rows_demonstrations(capsys):
    """`rlft reward check reasoning_gym --data reasoning_gym:<task>` works as typed."""
    from rlft.cli import main as cli

    rc = cli(["reward", "check", "reasoning_gym", "--data", "reasoning_gym:leg_counting?size=3",
              "--workers", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 samples: mean total 1 " in out and "failed samples: 0" in out
