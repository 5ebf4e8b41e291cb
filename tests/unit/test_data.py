"""Data loading, prompt rendering, the resumable sampler, demonstration ids.

The tokenizer is SmolLM2's (the default model's), taken from the tiny test
model that conftest builds once into the rlft cache.
"""

import copy
import json

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from rlft.data.demonstrations import demonstration_ids
from rlft.data.prompts import BadRow, build_prompts, render_tools
from rlft.data.sampler import PromptSampler
from rlft.data.sources import load_rows
from rlft.data.tasks import TASKS
from rlft.types import Prompt

ROWS = [
    {"prompt": "What is 2 + 2?", "answer": "4", "demonstration": "2 + 2 = 4"},
    {"prompt": "What is 3 + 5?", "answer": "8", "demonstration": "3 + 5 = 8"},
    {"prompt": "What is 9 - 4?", "answer": "5", "demonstration": "9 - 4 = 5"},
]


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture
def fresh_tok(tok):
    """A copy for tests that change the template or BOS settings."""
    return copy.deepcopy(tok)


# ----------------------------------------------------------------- load_rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("ext", ["jsonl", "json", "parquet"])
def test_load_rows_reads_each_file_format(tmp_path, ext):
    path = tmp_path / f"data.{ext}"
    if ext == "jsonl":
        write_jsonl(path, ROWS)
    elif ext == "json":
        path.write_text(json.dumps(ROWS))  # one JSON array
    else:
        datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    ds = load_rows(str(path), "train")
    assert list(ds) == ROWS
    assert list(load_rows(str(path), "eval")) == ROWS  # a single file serves every split


def test_load_rows_folder_picks_the_split_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:2])
    datasets.Dataset.from_list(ROWS[2:]).to_parquet(str(tmp_path / "eval.parquet"))
    assert [r["answer"] for r in load_rows(str(tmp_path), "train")] == ["4", "8"]
    assert [r["answer"] for r in load_rows(str(tmp_path), "eval")] == ["5"]
    with pytest.raises(FileNotFoundError, match=r"no test\.jsonl.*it has: eval\.parquet, "
                                                r"train\.jsonl.*data\.eval_split"):
        load_rows(str(tmp_path), "test")


def test_load_rows_errors_name_source_and_fix(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match=f"data.source='{missing}': no such file"):
        load_rows(missing, "train")
    (tmp_path / "d.csv").write_text("prompt\nhi\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'; use one of \.jsonl"):
        load_rows(str(tmp_path / "d.csv"), "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    datasets.Dataset.from_dict({"prompt": []}).to_parquet(str(empty / "train.parquet"))
    with pytest.raises(ValueError, match=r"cannot read .*train\.parquet' as \.parquet.*at least "
                                         r"one row"):
        load_rows(str(empty), "train")
    (empty / "eval.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"eval\.jsonl' is an empty file"):
        load_rows(str(empty), "eval")
    broken = write_jsonl(tmp_path / "broken.jsonl", ROWS[:1])
    broken.write_text(broken.read_text() + "{oops\n")
    with pytest.raises(ValueError, match=r"cannot read .*broken\.jsonl' as \.jsonl \(\w+"):
        load_rows(str(broken), "train")


def test_load_rows_builtin(tmp_path):
    ds = load_rows("builtin:json_extract", "eval")
    assert len(ds) == 200
    first = TASKS.get("json_extract")("eval")[0]
    assert json.loads(ds[0]["schema"]) == first["schema"]  # stored as a JSON string
    with pytest.raises(ValueError, match=r"builtin:arith.*Valid names: arithmetic, bank, json_extract"):
        load_rows("builtin:arith", "train")
    with pytest.raises(ValueError, match="splits train, eval, not 'validation'"):
        load_rows("builtin:arithmetic", "validation")


def test_load_rows_hub_offline_fails_clearly(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"data.source='someone/some-set', split 'train': not a "
                                         r"local file.*hub failed \(ConnectionError.*offline"):
        load_rows("someone/some-set", "train")


# ------------------------------------------------------------- build_prompts


def test_chat_template_applied_and_fields_kept(tok):
    ps = build_prompts(ROWS, tok, source_name="toy")
    p = ps.prompts[1]
    assert p.text.startswith("<|im_start|>system\n")  # SmolLM2's default system message
    assert p.text.endswith("<|im_start|>user\nWhat is 3 + 5?<|im_end|>\n<|im_start|>assistant\n")
    assert list(p.prompt_ids) == tok(p.text, add_special_tokens=False)["input_ids"]
    assert p.prompt_ids.count(tok.bos_token_id) == 3  # one <|im_start|> per turn, none extra
    assert p.uid == "toy#1" and p.answer == "8" and p.demonstration == "3 + 5 = 8"
    assert "prompt" not in p.fields
    assert (ps.skipped, dict(ps.skipped_reasons)) == (0, {})


def test_messages_prompt_and_system_prompt(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    (own,) = build_prompts([{"prompt": msgs}], tok).prompts
    assert own.text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi")
    # data.system_prompt replaces the row's system message ...
    (rep,) = build_prompts([{"prompt": msgs}], tok, system_prompt="Answer in French.").prompts
    assert rep.text.startswith("<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user")
    assert "Be brief." not in rep.text
    # ... and goes first where the row has none.
    (new,) = build_prompts([{"prompt": "Hi"}], tok, system_prompt="Answer in French.").prompts
    assert new.text == rep.text


def test_field_map_renames_columns(tok):
    rows = [{"question": "What is 1 + 1?", "solution": "2", "source": "toy"}]
    (p,) = build_prompts(rows, tok, field_map={"question": "prompt", "solution": "answer"}).prompts
    assert "What is 1 + 1?" in p.text
    assert dict(p.fields) == {"answer": "2", "source": "toy"}  # user columns ride along


def test_field_map_mistakes_are_errors(tok):
    ds = datasets.Dataset.from_list([{"question": "q", "prompt": "p"}])
    with pytest.raises(ValueError, match=r"renames \['query'\], which are not columns.*"
                                         r"\['question', 'prompt'\]"):
        build_prompts(ds, tok, field_map={"query": "prompt"})
    with pytest.raises(ValueError, match="two columns the name 'prompt'"):
        build_prompts(ds, tok, field_map={"question": "prompt"})


BAD = [
    {"prompt": "fine", "answer": "1"},
    {"question": "no prompt column", "answer": "2"},
    {"prompt": 42, "answer": "3"},
    {"prompt": "long " * 100, "answer": "4"},
    {"prompt": "fine", "schema": "{not json"},
    {"prompt": "also fine", "answer": "6"},
]


@pytest.mark.parametrize(("row", "pattern"), [
    (1, r"toy: row 1: no 'prompt' field \(columns: question, answer\).*data.field_map"),
    (2, r"toy: row 2: field 'prompt' must be a string or a non-empty list.*got int"),
    (3, r"toy: row 3: field 'prompt' renders to \d+ tokens, over data.max_prompt_tokens=64; "
        r"raise data.max_prompt_tokens or set data.on_bad_row=skip"),
    (4, r"toy: row 4: field 'schema' is a string but not valid JSON"),
])
def test_bad_rows_raise_naming_row_field_and_fix(tok, row, pattern):
    rows = [BAD[0], BAD[row]]  # the bad row is re-numbered 1
    pattern = pattern.replace(f"row {row}:", "row 1:")
    with pytest.raises(BadRow, match=pattern):
        build_prompts(rows, tok, max_prompt_tokens=64, source_name="toy")


def test_bad_rows_skipped_and_counted(tok):
    ps = build_prompts(BAD, tok, max_prompt_tokens=64, on_bad_row="skip", source_name="toy")
    assert [p.uid for p in ps.prompts] == ["toy#0", "toy#5"]  # uids keep the row numbers
    assert ps.skipped == 4
    assert dict(ps.skipped_reasons) == {"missing prompt": 1, "prompt not text or messages": 1,
                                        "prompt too long": 1, "bad JSON in schema": 1}
    with pytest.raises(ValueError, match=r"toy: every row was skipped as malformed"):
        build_prompts(BAD[1:5], tok, max_prompt_tokens=64, on_bad_row="skip", source_name="toy")
    with pytest.raises(ValueError, match="data.on_bad_row='drop'; choices: error, skip"):
        build_prompts(BAD, tok, on_bad_row="drop")
    with pytest.raises(ValueError, match="toy: the dataset has no rows"):
        build_prompts([], tok, source_name="toy")


def test_bos_exactly_once_without_template(fresh_tok):
    fresh_tok.chat_template = None
    fresh_tok.add_bos_token = True
    (p,) = build_prompts([{"prompt": "What is 2 + 2?"}], fresh_tok).prompts
    assert p.text == "What is 2 + 2?\n"
    body = fresh_tok(p.text, add_special_tokens=False)["input_ids"]
    assert list(p.prompt_ids) == [fresh_tok.bos_token_id, *body]


def test_bos_not_duplicated_when_the_template_writes_it(fresh_tok):
    fresh_tok.add_bos_token = True  # the tokenizer would add a BOS of its own...
    fresh_tok.chat_template = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: "
                               "{{ m['content'] }}\n{% endfor %}assistant: ")  # ...and so does this
    (p,) = build_prompts([{"prompt": "Hi"}], fresh_tok).prompts
    assert p.text == "<|im_start|>user: Hi\nassistant: "
    assert p.prompt_ids[0] == fresh_tok.bos_token_id and p.prompt_ids[1] != fresh_tok.bos_token_id


def test_json_fields_parsed_from_builtin_strings(tok):
    ds = load_rows("builtin:json_extract", "eval").select(range(3))
    ps = build_prompts(ds, tok)
    expected = TASKS.get("json_extract")("eval")[:3]
    assert [dict(p.fields) for p in ps.prompts] == [
        {k: v for k, v in r.items() if k != "prompt"} for r in expected]


def test_tools_become_a_system_message_when_the_template_cannot_render_them(tok):
    (p,) = build_prompts(load_rows("builtin:tool_call", "eval").select([0]), tok).prompts
    row = TASKS.get("tool_call")("eval")[0]
    assert p.fields["tools"] == row["tools"]
    assert p.text.startswith("<|im_start|>system\n" + render_tools(row["tools"]) + "<|im_end|>")
    assert f"<|im_start|>user\n{row['prompt']}<|im_end|>" in p.text


def test_tools_follow_the_rows_own_system_message(tok):
    tools = TASKS.get("tool_call")("eval")[0]["tools"]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    (p,) = build_prompts([{"prompt": msgs, "tools": tools}], tok).prompts
    assert p.text.startswith(f"<|im_start|>system\nBe brief.\n\n{render_tools(tools)}<|im_end|>")
    with pytest.raises(BadRow, match=r"row 0: field 'tools' must be a list of function specs"):
        build_prompts([{"prompt": "Hi", "tools": {"name": "f"}}], tok)


def test_tools_go_through_a_template_that_renders_them(fresh_tok):
    fresh_tok.chat_template = ("{% if tools %}TOOLS {{ tools | map(attribute='function.name') | "
                               "join(',') }}\n{% endif %}{% for m in messages %}{{ m['content'] }}"
                               "\n{% endfor %}A:")
    tools = TASKS.get("tool_call")("eval")[0]["tools"]
    (p,) = build_prompts([{"prompt": "Set a timer.", "tools": json.dumps(tools)}],
                         fresh_tok).prompts
    assert p.text == ("TOOLS get_weather,convert_currency,set_timer,search_flights\n"
                      "Set a timer.\nA:")


def test_render_tools_hand_written():
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather.",
        "parameters": {"type": "object", "required": ["city"], "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}}}}},
        {"name": "ping", "parameters": {}}]  # a bare spec without the "function" wrapper
    assert render_tools(tools) == (
        "You can call these tools:\n"
        '- get_weather(city: string, unit?: "C" | "F"): Weather.\n'
        "- ping()\n"
        'To call a tool, reply with <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>.')


def test_builtin_prompts_fit_the_default_prompt_budget(tok):
    # Config default data.max_prompt_tokens is 256; the default run must not skip rows.
    for task in TASKS:
        ps = build_prompts(load_rows(f"builtin:{task}", "eval"), tok, max_prompt_tokens=256)
        assert len(ps.prompts) == 200, task
    arith = build_prompts(load_rows("builtin:arithmetic", "eval"), tok).prompts
    assert max(len(p.prompt_ids) for p in arith) <= 32  # the short system message at work


# -------------------------------------------------------- demonstration_ids


def test_demonstration_ids_continue_the_prompt(tok):
    (p,) = build_prompts([ROWS[0]], tok).prompts
    ids = demonstration_ids(p, tok)
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == "2 + 2 = 4<|im_end|>"
    # Prompt then demonstration is exactly the joint encoding of the two texts.
    joint = tok(p.text + "2 + 2 = 4", add_special_tokens=False)["input_ids"]
    assert [*p.prompt_ids, *ids[:-1]] == joint


def test_demonstration_ids_missing_is_an_error(tok):
    p = Prompt(uid="toy#3", text="x", prompt_ids=(1,), fields={"answer": "4"})
    with pytest.raises(ValueError, match=r"row toy#3 has no `demonstration`.*data.field_map"):
        demonstration_ids(p, tok)


# ------------------------------------------------------------------ sampler


def prompts(n: int) -> list[Prompt]:
    return [Prompt(uid=str(i), text=str(i), prompt_ids=(i,)) for i in range(n)]


def uids(batch: list[Prompt]) -> list[int]:
    return [int(p.uid) for p in batch]


def test_sampler_unshuffled_hand_worked():
    # 5 prompts, batches of 2: [0,1] [2,3] [4 | 0] [1,2] -- the third batch
    # crosses into epoch 1, after which one prompt of epoch 1 has been drawn.
    s = PromptSampler(prompts(5), batch_size=2, seed=0, shuffle=False)
    seen = []
    for _ in range(4):
        seen.append(uids(s.next_batch()))
        seen.append((s.epoch, s.position))
    assert seen == [[0, 1], (0, 2), [2, 3], (0, 4), [4, 0], (1, 1), [1, 2], (1, 3)]


def test_sampler_epochs_are_seeded_permutations():
    n, b = 12, 4
    a = PromptSampler(prompts(n), b, seed=3)
    stream = [u for _ in range(3 * n // b) for u in uids(a.next_batch())]
    epochs = [stream[i:i + n] for i in range(0, 3 * n, n)]
    assert all(sorted(e) == list(range(n)) for e in epochs)  # each epoch: every prompt once
    assert epochs[0] != epochs[1] and epochs[0] != list(range(n))  # reshuffled each epoch
    same = PromptSampler(prompts(n), b, seed=3)
    assert [u for _ in range(9) for u in uids(same.next_batch())] == stream
    other = PromptSampler(prompts(n), b, seed=4)
    assert [u for _ in range(9) for u in uids(other.next_batch())] != stream


def resumed_equals_uninterrupted(n: int, batch: int, cut: int, total: int, seed: int) -> None:
    ref = PromptSampler(prompts(n), batch, seed)
    expected = [uids(ref.next_batch()) for _ in range(total)]
    first = PromptSampler(prompts(n), batch, seed)
    for _ in range(cut):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    second = PromptSampler(prompts(n), batch, seed)
    second.load_state_dict(state)
    assert [uids(second.next_batch()) for _ in range(total - cut)] == expected[cut:]


def test_sampler_resume_mid_epoch_and_at_epoch_boundary():
    # 6 prompts, batches of 3: cut 1 is mid-epoch (position 3 of epoch 0);
    # cut 2 ends epoch 0 exactly (position 6, the shuffle of epoch 1 not yet drawn).
    s = PromptSampler(prompts(6), 3, seed=1)
    s.next_batch()
    assert (s.epoch, s.position) == (0, 3)
    s.next_batch()
    assert (s.epoch, s.position) == (0, 6)
    resumed_equals_uninterrupted(6, 3, cut=1, total=8, seed=1)
    resumed_equals_uninterrupted(6, 3, cut=2, total=8, seed=1)
    resumed_equals_uninterrupted(6, 4, cut=3, total=8, seed=1)  # cut after a straddling batch


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), batch=st.integers(1, 7), cut=st.integers(0, 12),
       seed=st.integers(0, 2**31))
def test_sampler_resume_property(n, batch, cut, seed):
    resumed_equals_uninterrupted(n, batch, cut, total=cut + 6, seed=seed)


def test_sampler_state_must_match_the_run():
    s = PromptSampler(prompts(5), 2, seed=0)
    s.next_batch()
    with pytest.raises(ValueError, match=r"num_prompts=5 but this run has num_prompts=6.*"
                                         r"same data.source"):
        PromptSampler(prompts(6), 2, seed=0).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="seed=0 but this run has seed=1"):
        PromptSampler(prompts(5), 2, seed=1).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        PromptSampler(prompts(5), 0, seed=0)
    with pytest.raises(ValueError, match="at least one prompt"):
        PromptSampler([], 2, seed=0)
