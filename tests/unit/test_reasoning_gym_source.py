"""`data.source=reasoning_gym:<task>`: rows, splits, and the errors before a run."""

import sys

import pytest

from rlft.data import reasoning_gym as rgdata
from rlft.data.prompts import build_prompts
from rlft.data.sources import check_source, load_rows
from rlft.run.preflight import InputError, check_data


def test_a_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # makes `import` raise
    with pytest.raises(ValueError, match=r'pip install -e "\.\[envs\]"'):
        check_source("reasoning_gym:basic_arithmetic", "train")
    with pytest.raises(ImportError):
        rgdata.library()


@pytest.mark.parametrize("source, match", [
    ("reasoning_gym:basic_arithmetic?sise=5", "unknown setting 'sise'; settings: size"),
    ("reasoning_gym:basic_arithmetic?size=0", "size='0' must be a whole number >= 1"),
    ("reasoning_gym:basic_arithmetic?seed=-1", "seed='-1' must be a whole number >= 0"),
    ("reasoning_gym:basic_arithmetic?size", "size='' must be a whole number"),
])
def test_bad_settings_are_named(source, match):
    with pytest.raises(ValueError, match=match):
        rgdata.parse_source(source)


# Everything below builds rows with the library.
rg = pytest.importorskip("reasoning_gym")


def test_an_unknown_task_is_one_line_with_how_to_list_them():
    with pytest.raises(ValueError) as info:
        check_source("reasoning_gym:leg_countin", "train")
    msg = str(info.value)
    assert "\n" not in msg and "no task 'leg_countin'" in msg and "Did you mean leg_counting" in msg
    assert "sorted(f.DATASETS)" in msg
    with pytest.raises(InputError, match="no task 'leg_countin'"):  # rlft train: exit 2
        check_data("reasoning_gym:leg_countin", ["train", "eval"])
    with pytest.raises(ValueError, match="not supported"):
        check_source("reasoning_gym:composite", "train")
    with pytest.raises(ValueError, match="has splits train, eval, not 'test'"):
        check_source("reasoning_gym:leg_counting", "test")
    check_source("reasoning_gym:leg_counting?size=10", "eval")  # a good one passes


@pytest.mark.parametrize("task", ["basic_arithmetic", "leg_counting", "spell_backward"])
def test_rows_are_the_library_entries(task):
    rows = load_rows(f"reasoning_gym:{task}?size=12&seed=3", "train")
    assert len(rows) == 12
    assert rows.column_names == ["prompt", "answer", "demonstration", "rg_entry"]
    ds = rg.create_dataset(task, seed=3, size=1000)
    system = rg.utils.SYSTEM_PROMPTS["default"]
    for row in rows:
        entry = rgdata.decode_entry(row["rg_entry"])
        assert entry == ds[entry["metadata"]["source_index"]]  # the entry the library made
        assert row["prompt"] == [{"role": "system", "content": system},
                                 {"role": "user", "content": entry["question"]}]
        assert row["answer"] == entry["answer"]
        assert row["demonstration"] == f"<answer>{entry['answer']}</answer>"


def test_splits_are_disjoint_and_sized_independently():
    source = "reasoning_gym:chain_sum?size=300&eval_size=40"
    train, evals = load_rows(source, "train"), load_rows(source, "eval")
    assert (len(train), len(evals)) == (300, 40)
    question = lambda r: r["prompt"][-1]["content"]  # noqa: E731
    train_q = {question(r) for r in train}
    assert len(train_q) == 300 and not train_q & {question(r) for r in evals}
    # The train size does not move the eval rows; the same call gives the same rows.
    assert load_rows("reasoning_gym:chain_sum?size=5&eval_size=40", "eval")["rg_entry"] \
        == evals["rg_entry"]
    assert load_rows(source, "train")["rg_entry"] == train["rg_entry"]
    assert load_rows(source.replace("?", "?seed=9&"), "train")["rg_entry"] != train["rg_entry"]


def test_tasks_without_one_answer_have_none():
    rows = load_rows("reasoning_gym:graph_color?size=3", "train")
    assert rows["answer"] == [None] * 3 and rows["demonstration"] == [None] * 3


def test_rows_render_as_prompts_with_their_fields():
    rows = load_rows("reasoning_gym:basic_arithmetic?size=4", "train")
    prompts = build_prompts(rows, None, source_name="rg").prompts
    assert len(prompts) == 4
    assert "<answer>" in prompts[0].text and prompts[0].fields["rg_entry"] == rows[0]["rg_entry"]
    # data.system_prompt replaces the library's, as for any row with a system message.
    own = build_prompts(rows, None, system_prompt="Be brief.").prompts[0].text
    assert own.startswith("Be brief.\n") and "<answer>" not in own
