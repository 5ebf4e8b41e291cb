"""`rlft reward check`: exit status and what it prints, through the real RewardService."""

import json
import textwrap

import pytest

from rlft.cli import main as cli

USER_FILE = '''
def unlucky(completion, *, answer=None, **fields):
    """Raises on the completion "13"; else 1.0 when it is the answer."""
    if completion == "13":
        raise ValueError("thirteen is unlucky")
    return {"total": float(completion == answer), "chars": float(len(completion))}
'''


def write_data(tmp_path, completions):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": str(10 + i)}) + "\n"
                            for i in range(len(completions))))
    outs = tmp_path / "outs.jsonl"
    outs.write_text("".join(json.dumps({"completion": c}) + "\n" for c in completions))
    reward = tmp_path / "my_rewards.py"
    reward.write_text(textwrap.dedent(USER_FILE))
    return str(rows), str(outs), str(reward)


def test_good_reward_exits_0_and_prints_components(tmp_path, capsys):
    rows, outs, reward = write_data(tmp_path, ["10", "no", "12"])
    rc = cli(["reward", "check", f"{reward}:unlucky", "accuracy", "--data", rows,
              "--completions", outs, "--workers", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    # Row 0: unlucky total 1 + accuracy 1 = 2; row 1: both 0.
    assert "rows.jsonl [train]#0" in out and "unlucky=1 unlucky/chars=2 accuracy=1" in out
    assert "unlucky=0 unlucky/chars=2 accuracy=0" in out
    assert "3 samples: mean total 1.333" in out  # (2 + 0 + 2) / 3
    assert "failed samples: 0 (raised=0, timeout=0, invalid=0)" in out


def test_demonstrations_are_the_default_completions(capsys):
    rc = cli(["reward", "check", "accuracy", "--data", "builtin:arithmetic", "--limit", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "builtin:arithmetic [train]#2" in out and "accuracy: mean 1 over 3 scored" in out


def test_failing_user_reward_exits_1_naming_the_sample(tmp_path, capsys):
    rows, outs, reward = write_data(tmp_path, ["10", "13", "12"])
    rc = cli(["reward", "check", f"{reward}:unlucky", "--data", rows, "--completions", outs,
              "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 1, out
    line = next(ln for ln in out.splitlines() if ln.startswith(f"{rows} [train]#1 "))
    assert "unlucky=FAILED" in line and "raised:" in line and "thirteen is unlucky" in line
    assert "my_rewards.py:" in line  # where it raised
    assert f"failed samples: 1 (raised=1, timeout=0, invalid=0): {rows} [train]#1" in out


def test_misspelled_reward_exits_2_with_a_suggestion(capsys):
    rc = cli(["reward", "check", "acuracy", "--data", "builtin:arithmetic", "--limit", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown reward 'acuracy'. Did you mean 'accuracy'?" in err


# ---- the rows training sees: data.* overrides and config files (#17) ----

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def tool_files(tmp_path):
    rows = write_jsonl(tmp_path / "tools.jsonl", [
        {"prompt": "Weather in Oslo?", "tools": TOOLS,
         "reference_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
        {"prompt": "Weather in Rome?", "tools": TOOLS,
         "reference_call": {"name": "get_weather", "arguments": {"city": "Rome"}}}])
    outs = write_jsonl(tmp_path / "c.jsonl", [  # right tool, wrong city; then right
        {"completion": '<tool_call>{"name": "get_weather", "arguments": {"city": "Bergen"}}'
                       '</tool_call>'},
        {"completion": '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}'
                       '</tool_call>'}])
    return rows, outs


def test_field_map_override_brings_in_the_reference(tmp_path, capsys):
    rows, outs = tool_files(tmp_path)
    args = ["reward", "check", "tool_call", "--data", rows, "--completions", outs, "--workers", "0"]
    assert cli(args) == 0
    out, err = capsys.readouterr()
    assert "tool_call/values" not in out and "2 samples: mean total 1 " in out  # degraded
    assert ("warning: reward 'tool_call' reads row field 'answer', which no row has" in err
            and "The rows' columns: tools, reference_call." in err
            and err.rstrip().endswith("data.field_map={reference_call: answer}"))
    assert cli(args + ["data.field_map={reference_call: answer}"]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err
    lines = [ln for ln in out.splitlines() if ln.startswith(rows)]
    assert " tool_call/values=0 " in lines[0] and " tool_call/values=1 " in lines[1]
    assert lines[0].endswith("tool_call/err_values=1")  # the error category: a wrong value
    assert "tool_call: mean 0.8571 over 2 scored" in out  # ((1+2+1+1+0)/7 + 1) / 2


def test_config_file_supplies_data_settings_and_rewards(tmp_path, capsys):
    rows = write_jsonl(tmp_path / "rows.jsonl", [
        {"question": "Oslo, 1999?", "gold": '{"city": "Oslo", "year": 1999}',
         "json_schema": {"type": "object", "required": ["city", "year"]}}])
    outs = write_jsonl(tmp_path / "c.jsonl", [{"completion": '{"city": "Oslo"}'}])
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  source: {rows}\n  prompt_field: question\n"
                      f"reward:\n  terms: [{{name: json_structure, weight: 2.0}}]\n")
    base = ["reward", "check", "--config", str(config), "--completions", outs, "--workers", "0"]
    assert cli(base) == 0
    out, err = capsys.readouterr()
    assert "json_structure=1 " in out and "   2  " in out  # weight 2, degraded to full marks
    fix = "data.field_map={gold: answer, json_schema: schema}"
    assert err.count("warning:") == 2 and err.count(fix) == 2
    assert cli(base + [fix]) == 0  # an override on top of the file, as rlft train takes it
    out, err = capsys.readouterr()
    assert "warning" not in err and "json_structure/schema=0 json_structure/keys=0.5" in out


def test_bad_settings_exit_2_naming_the_key(tmp_path, capsys):
    rows, outs = tool_files(tmp_path)
    assert cli(["reward", "check", "tool_call", "--data", rows, "data.feild_map={a: b}"]) == 2
    assert "Did you mean 'data.field_map'?" in capsys.readouterr().err
    assert cli(["reward", "check", "tool_call", "--data", rows, "--completions", outs,
                "data.field_map={gold: answer}"]) == 2
    assert "data.field_map renames ['gold'], which are not columns" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither a reward nor a config to take terms from
        cli(["reward", "check", "--data", rows])
    assert "name a REWARD" in capsys.readouterr().err


def test_skipped_rows_keep_their_own_completions(tmp_path, capsys):
    rows = write_jsonl(tmp_path / "rows.jsonl", [
        {"prompt": "q0", "answer": "10"}, {"prompt": None, "answer": "11"},
        {"prompt": "q2", "answer": "12"}])
    outs = write_jsonl(tmp_path / "c.jsonl", [{"completion": c} for c in ("10", "11", "12")])
    rc = cli(["reward", "check", "accuracy", "--data", rows, "--completions", outs,
              "--workers", "0", "data.on_bad_row=skip"])
    out, err = capsys.readouterr()
    assert rc == 0 and "skipped 1 malformed rows" in err
    assert "#0 " in out and "#2 " in out and "#1 " not in out
    assert "accuracy: mean 1 over 2 scored" in out  # row 2 scored with line 2, not line 1


def test_env_replays_recorded_conversations_and_scores_end_states(tmp_path, capsys):
    from rlft.data.tasks import TASKS

    rows = TASKS.get("bank")("train")[:2]
    talks = [json.loads(r["demonstration_turns"]) for r in rows]
    first = json.loads(talks[1][0]["content"].removeprefix("<tool_call>")
                       .removesuffix("</tool_call>"))
    first["arguments"] = {k: v + 1000 if isinstance(v, int) else v
                          for k, v in first["arguments"].items()}  # an amount no row asks for
    talks[1][0] = {"role": "assistant", "content": "", "tool_calls": [first]}
    outs = tmp_path / "talks.jsonl"
    outs.write_text("".join(json.dumps({"conversation": t}) + "\n" for t in talks))
    rc = cli(["reward", "check", "state_match", "--data", "builtin:bank", "--env", "bank",
              "--completions", str(outs), "--workers", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "builtin:bank [train]#0                1  state_match=1 state_match/exact=1" in out
    # Row 1's first call moved more than its account holds, or opened with another deposit:
    # the state differs from the reference's in at least one field.
    line = next(x for x in out.splitlines() if x.startswith("builtin:bank [train]#1"))
    assert "state_match/exact=0" in line
