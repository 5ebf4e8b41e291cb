"""`rlft plot` (curves.png) and `rlft runs` (the table) on run folders written by
the real writers: RunFolder.create, JsonlSink and checkpoint.save."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.image
import pytest
from matplotlib.collections import PolyCollection

from rlft.commands import plot, runs
from rlft.config import load_config
from rlft.run import checkpoint
from rlft.run.folder import RunFolder
from rlft.run.history import read_metrics
from rlft.run.tracking import JsonlSink
from rlft.types import StepMetrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = {"rollout": 1.5, "reward": 0.25, "update": 2.0, "sync": 0.25}  # 4 s a step


def _metrics(step: int, reward: float, **extra: float) -> StepMetrics:
    # reward/flat_groups: a figure under reward/ that is no term (the config says which are)
    return StepMetrics(step=step, policy_version=step, reward_mean=reward, reward_std=0.1 + step / 100,
                       reward_components={"accuracy": reward, "tool_call": reward / 2,
                                          "tool_call/values": reward / 4},
                       response_len_mean=20.0 - step, loss=0.1, grad_norm=1.0,
                       entropy=1.5 - step / 10, kl=step / 1000, clip_frac=0.0,
                       tokens_per_s=50.0, stage_seconds=STAGES,
                       extra={"reward/flat_groups": 1.0, **extra})


def _run(root: Path, name: str, rewards: list[float], algo: str = "grpo", first: int = 0,
         ckpt_every: int = 3, steps: int | None = None) -> Path:
    """A run folder as `rlft train` leaves it: config.yaml, metrics.jsonl, checkpoints/."""
    steps = steps or first + len(rewards)
    cfg = load_config(None, [f"logging.run_dir={root}", f"logging.run_name={name}",
                             f"algo.name={algo}", f"train.steps={steps}",
                             "reward.terms=[{name: accuracy}, {name: tool_call, weight: 0.5}]"])
    folder = RunFolder.create(cfg, None)
    sink = JsonlSink(folder.path / "metrics.jsonl", first_step=first)
    for i, reward in enumerate(rewards):
        step = first + i
        sink.log(_metrics(step, reward, **({"eval/reward_mean": 0.9} if step == 1 else {})))
        if (step + 1) % ckpt_every == 0:
            checkpoint.save(folder.ckpt_root, checkpoint.TrainerState(step + 1, step + 1, {}),
                            lambda p: Path(p).mkdir(), keep=2)
    sink.close()
    return folder.path


def _lines(ax) -> dict[str, list[float]]:
    return {line.get_label(): [float(y) for y in line.get_ydata()] for line in ax.get_lines()}


# -- rlft plot -------------------------------------------------------------------

def test_write_curves_writes_a_png_of_the_figure_size(tmp_path, capsys):
    run = _run(tmp_path, "r", [0.2, 0.4, 0.5, 0.7])
    assert plot.main([str(run)]) == 0
    out = run / "curves.png"
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    height, width, _channels = matplotlib.image.imread(out).shape
    assert (width, height) == (1200, 1100)  # figsize 12 x 11 in at 100 dpi
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []  # renamed into place
    other = tmp_path / "elsewhere.png"
    assert plot.write_curves(run, other) == other and other.read_bytes()[:8] == PNG_MAGIC


def test_the_panels_hold_the_logged_figures(tmp_path):
    rewards = [0.2, 0.4, 0.5, 0.7]
    run = _run(tmp_path, "r", rewards)
    info = plot.run_info(run)
    assert info == plot.RunInfo("r", "grpo", "smollm2-135m-instruct", ("accuracy", "tool_call"))
    fig = plot.build_figure(read_metrics(run / "metrics.jsonl"), info)
    assert fig.get_suptitle() == "r · grpo on smollm2-135m-instruct · 4 steps"
    reward, length, stages, kl, entropy = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [p.title for p in plot.PANELS]
    lines = _lines(reward)
    assert set(lines) == {"reward/mean", "reward/accuracy", "reward/tool_call",
                          "reward/tool_call/values", "eval/reward_mean"}  # no flat_groups
    assert lines["reward/mean"] == pytest.approx(rewards)
    assert lines["reward/accuracy"] == pytest.approx(rewards)
    assert lines["reward/tool_call"] == pytest.approx([r / 2 for r in rewards])
    assert lines["reward/tool_call/values"] == pytest.approx([r / 4 for r in rewards])
    assert lines["eval/reward_mean"] == [0.9]  # logged at step 1 only
    band = [c for c in reward.collections if isinstance(c, PolyCollection)]
    assert len(band) == 1  # the ± std band: its top edge reaches mean + std at the last step
    assert band[0].get_paths()[0].vertices[:, 1].max() == pytest.approx(0.7 + 0.13)
    assert _lines(length) == {"response_len/mean": [20.0, 19.0, 18.0, 17.0]}
    assert _lines(kl) == {"kl": pytest.approx([0.0, 0.001, 0.002, 0.003])}
    assert _lines(entropy) == {"entropy": pytest.approx([1.5, 1.4, 1.3, 1.2])}
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in stages.containers}
    assert bars == {k: [v] * 4 for k, v in STAGES.items()}
    tops = [p.get_y() + p.get_height() for p in stages.containers[-1].patches]
    assert tops == pytest.approx([4.0] * 4)  # stacked: the top bar ends at the step's time


def test_a_resumed_run_plots_each_step_once_the_newest_line_winning(tmp_path, capsys):
    run = _run(tmp_path, "r", [0.1, 0.2, 0.3, 0.4])  # crashed after step 3 ...
    _run(tmp_path, "r", [0.6, 0.7], first=2)  # ... resumed from step 2: JsonlSink drops 2, 3
    assert read_metrics(run / "metrics.jsonl").series("reward/mean") == [0.1, 0.2, 0.6, 0.7]
    with open(run / "metrics.jsonl", "a") as f:  # another writer appends step 3 again, then dies
        f.write(json.dumps(_metrics(3, 0.9).flat()) + '\n{"step": 4, "rew')
    history = read_metrics(run / "metrics.jsonl")
    assert history.steps == [0, 1, 2, 3] and history.skipped_lines == (6,)
    reward = plot.build_figure(history).axes[0]
    assert _lines(reward)["reward/mean"] == pytest.approx([0.1, 0.2, 0.6, 0.9])
    assert "reward/flat_groups" in _lines(reward)  # no config given: every reward/ figure
    plot.write_curves(run)
    assert "lines [6]" in capsys.readouterr().err  # said, not swallowed


def test_one_step_and_missing_figures(tmp_path):
    """A one-step run from a writer that logged neither KL, entropy nor stage times."""
    run = _run(tmp_path, "r", [], steps=1)
    (run / "metrics.jsonl").write_text(json.dumps(
        {"step": 0, "reward/mean": 0.5, "reward/std": 0.2, "response_len/mean": 9}) + "\n")
    fig = plot.build_figure(read_metrics(run / "metrics.jsonl"))
    assert len(fig.axes) == len(plot.PANELS)
    texts = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.axes}
    for title in ("time per stage", "KL to the reference", "entropy"):
        assert texts[title] == [plot.NOT_LOGGED], title
    assert texts["response length"] == []
    reward = fig.axes[0]
    assert _lines(reward)["reward/mean"] == [0.5]
    assert [t.get_text() for t in reward.get_xticklabels()] == ["0"]  # no ±0.05 ticks
    assert plot.write_curves(run).read_bytes()[:8] == PNG_MAGIC


def test_kl_that_is_zero_throughout_says_why(tmp_path):
    run = _run(tmp_path, "r", [], steps=3)
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": s, "reward/mean": 0.5, "kl": 0.0}) + "\n" for s in range(3)))
    kl = plot.build_figure(read_metrics(run / "metrics.jsonl")).axes[3]
    assert [t.get_text() for t in kl.texts] == [plot.PANELS[3].zero_note]


def test_step_wall_time_is_a_line_over_the_stage_bars_and_the_runs_time(tmp_path):
    """Where the loop logs time/step (stages may overlap in it), that is the step's time."""
    run = _run(tmp_path, "r", [], steps=2)
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": s, "reward/mean": 0.5, "time/rollout": 3.0, "time/update": 2.0,
         "time/step": 4.0}) + "\n" for s in range(2)))
    history = read_metrics(run / "metrics.jsonl")
    stages = plot.build_figure(history).axes[2]
    assert [c.get_label() for c in stages.containers] == ["rollout", "update"]
    assert _lines(stages) == {"step wall time": [4.0, 4.0]}
    assert history.step_seconds() == 8.0 and runs.summarize(run, tmp_path).seconds == 8.0


@pytest.mark.parametrize("case, says", [
    ("missing", "does not exist"),
    ("empty_dir", "is not a run folder"),
    ("config_only", "has no metrics.jsonl"),
    ("no_steps", "holds no step record"),
])
def test_plot_errors_are_one_line_with_the_fix(tmp_path, capsys, case, says):
    run = tmp_path / "r"
    if case != "missing":
        run.mkdir()
    if case in ("config_only", "no_steps"):
        (run / "config.yaml").write_text("algo: {name: grpo}\n")
    if case == "no_steps":
        (run / "metrics.jsonl").write_text('{"step": 0, "rew')  # torn before the first step
    assert plot.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1
    assert "rlft runs" in err or "logging.loggers" in err or "first step" in err  # the fix
    with pytest.raises(plot.PlotError):
        plot.write_curves(run)


def test_plot_out_that_cannot_be_written_names_it(tmp_path):
    run = _run(tmp_path, "r", [0.5])
    with pytest.raises(plot.PlotError, match="does not exist"):
        plot.write_curves(run, tmp_path / "nope" / "c.png")
    with pytest.raises(plot.PlotError, match="cannot write .* pick a writable path"):
        plot.write_curves(run, tmp_path)  # a folder
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing left


# -- rlft runs -------------------------------------------------------------------

def _touch(run: Path, when: float) -> None:
    for p in [run, *run.rglob("*")]:
        os.utime(p, (when, when))


def test_runs_lists_each_run_newest_first(tmp_path, capsys):
    old = _run(tmp_path, "grpo-old", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    new = _run(tmp_path / "compare" / "20260101", "chord", [0.5, 0.9], algo="chord")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("algo: [unclosed\n")
    _touch(old, 1_000_000_000)
    _touch(broken, 1_500_000_000)
    _touch(new, 2_000_000_000)
    assert runs.main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    head, *rows = out.strip().splitlines()
    assert head.split()[:3] == ["run", "algo", "steps"]
    assert [r.split()[0] for r in rows] == ["compare/20260101/chord", "broken", "grpo-old"]
    chord, _, grpo = (r.split() for r in rows)
    assert chord[1:8] == ["chord", "2/2", "0.700", "->", "0.700", "-", "8s"]  # no ckpt yet
    # first 5 mean 0.3, last 5 mean 0.5; checkpoints at 3 and 6 steps; 7 steps x 4 s
    assert grpo[1:8] == ["grpo", "7/7", "0.300", "->", "0.500", "step-000006", "28s"]
    assert "note: broken: config.yaml is not valid YAML" in err


def test_runs_summary_of_a_run_without_metrics(tmp_path):
    run = _run(tmp_path, "r", [], steps=16)  # started, no step logged yet
    s = runs.summarize(run, tmp_path)
    assert (s.name, s.algorithm, s.steps_done, s.steps_total) == ("r", "grpo", 0, 16)
    assert s.reward_first is None and s.checkpoint is None and s.seconds == 0


def test_runs_errors(tmp_path, capsys):
    assert runs.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "logging.run_dir" in err and err.count("\n") == 1
    assert runs.main([str(tmp_path)]) == 0
    assert "no run folders" in capsys.readouterr().out
