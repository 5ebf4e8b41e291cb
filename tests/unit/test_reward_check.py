"""`rlft reward check`: exit status and what it prints, through the real RewardService."""

import json
import textwrap

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
