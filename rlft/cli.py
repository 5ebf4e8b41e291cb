"""`rlft` command line: train, reward check, export, config."""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlft.commands.export import ExportError
from rlft.config import Config, ConfigError, describe, load_config, to_yaml
from rlft.run.console import ConsoleRouting
from rlft.run.preflight import InputError, check_run

USAGE = """rlft [--debug] [--verbose] COMMAND ...

commands:
  train [CONFIG.yaml] [key.sub=value ...] [--resume auto|CKPT] [--print-config]
  sft [CONFIG.yaml] [key.sub=value ...]                     supervised fine-tune on the rows' demonstrations (sft.*)
  reward check [REWARD ...] [--data FILE] [--config FILE] [key.sub=value ...] [--completions FILE]
                                      score completions with the run's data settings (rlft reward check -h)
  export RUN_DIR OUT_DIR                                    Hugging Face folder of the newest checkpoint
  eval CONFIG|RUN_DIR [key.sub=value ...] [--k K] [--limit N] [--out DIR]
                                      pass@k and mean reward on data.eval_split (eval.json, eval.md)
  config [--markdown]                                       every config key, its default and meaning
  plot RUN_DIR [--out FILE]                                 curves.png: reward, length, KL, entropy, stage times
  runs [DIR]                                                the runs in DIR (default runs/), newest first

options (anywhere on the line):
  --verbose   show Ray's, vLLM's and the workers' logs on the console too (always in runs/<run>/logs/)
  --debug     a traceback for unexpected errors (without it: one line, exit status 1)
"""
GLOBAL_FLAGS = ("--debug", "--verbose")


@dataclass(frozen=True)
class Options:
    debug: bool = False
    verbose: bool = False


def _reward(args: list[str], opts: Options) -> int:
    if args[:1] != ["check"]:
        return _unknown(["reward", *args[:1]])
    from rlft.commands.reward_check import main as reward_check

    return reward_check(args[1:])


def _lazy(module: str) -> Callable[[list[str], Options], int]:
    """A command whose module is imported only when it runs (torch, Ray, ...)."""
    return lambda args, opts: importlib.import_module(module).main(args)


def _config(args: list[str], opts: Options) -> int:
    p = argparse.ArgumentParser(prog="rlft config", description="every config key, its default and meaning")
    p.add_argument("--markdown", action="store_true",
                   help="as the Markdown page docs/config-reference.md (one table per section)")
    if p.parse_args(args).markdown:
        from rlft.config.reference import markdown

        sys.stdout.write(markdown())
        return 0
    for path, default, help_ in describe(Config):
        print(f"{path:32} {default:28} {help_}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = Options(debug="--debug" in argv, verbose="--verbose" in argv)
    argv = [a for a in argv if a not in GLOBAL_FLAGS]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        return _unknown(argv[:2])
    try:
        return command(argv[1:], opts)
    except ConfigError as exc:
        return _fail(f"config error: {exc}", 2)
    except (InputError, ExportError) as exc:
        return _fail(f"error: {exc}", 2)
    except KeyboardInterrupt:
        return _fail(f"interrupted ({argv[0]})", 130)
    except Exception as exc:
        if opts.debug:
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return _fail(f"error: {type(exc).__name__}: {first} (run with --debug for the "
                     f"traceback)", 1)


def _fail(message: str, status: int) -> int:
    """One line on stderr, whatever the message's own line breaks."""
    print(" ".join(message.split()), file=sys.stderr)
    return status


def _unknown(words: list[str]) -> int:
    print(f"unknown command {' '.join(words)!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def _without_resume(args: list[str]) -> list[str]:
    """The train arguments minus any --resume (the hint adds `--resume auto`).

    >>> _without_resume(["a.yaml", "--resume", "auto", "x=1", "--resume=runs/r"])
    ['a.yaml', 'x=1']
    """
    out, skip = [], False
    for a in args:
        if skip or a.startswith("--resume="):
            skip = False
            continue
        skip = a == "--resume"
        if not skip:
            out.append(a)
    return out


def _train(args: list[str], opts: Options) -> int:
    p = argparse.ArgumentParser(prog="rlft train")
    p.add_argument("items", nargs="*", help="optional CONFIG.yaml, then key.sub=value overrides")
    p.add_argument("--resume", default=None, help="'auto' (newest complete checkpoint) or a path")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ns = p.parse_intermixed_args(args)  # overrides may follow --resume
    path = ns.items[0] if ns.items and "=" not in ns.items[0] else None
    overrides = ns.items[1:] if path else ns.items
    cfg = load_config(path, overrides)
    if ns.print_config:
        print(to_yaml(cfg), end="")
        return 0
    splits = [cfg.data.train_split] + ([cfg.data.eval_split] if cfg.train.eval_every else [])
    check_run(cfg, splits, resume=ns.resume)  # before Ray or a model starts
    import ray

    from rlft.loop import TrainingLoop
    from rlft.run import checkpoint

    trainer, interrupted = None, False
    with ConsoleRouting(verbose=opts.verbose):
        try:
            trainer = TrainingLoop(cfg, resume=ns.resume)
            history = trainer.train()
        except KeyboardInterrupt:
            interrupted = True
        except ray.exceptions.RayActorError as exc:
            print(f"\nA worker died: {exc}\nThe last complete checkpoint is intact; continue "
                  f"with:\n  rlft train {' '.join(_without_resume(args))} --resume auto",
                  file=sys.stderr)
            return 1
        finally:
            if trainer is not None:
                trainer.close()
        # Done or Ctrl-C (a dead worker's run stays up for inspection): Ray ends here,
        # so the workers' last lines still go to the run's logs.
        ray.shutdown()
    if interrupted:  # Ctrl-C: the actors and Ray are gone; one line says where things stand
        if trainer is None:
            return _fail("interrupted while starting; nothing was trained", 130)
        return _fail(interrupted_line(trainer.step, cfg.train.steps,
                                      checkpoint.latest(trainer.run.ckpt_root), args,
                                      cfg.logging.run_name, trainer.run.name,
                                      cfg.checkpoint.every), 130)
    if history:
        _summary(trainer.run.path)
    return 0


def _summary(run_dir: Path) -> None:
    """The last lines of a run: its whole reward history (a resumed run's too)
    and the picture of it."""
    from rlft.commands.plot import PlotError, load_history, write_curves

    try:
        rewards = load_history(run_dir).series("reward/mean")
        k = min(5, len(rewards))
        first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
        print(f"done: {len(rewards)} steps, mean reward first {k} {first:.3f} -> last {k} "
              f"{last:.3f}; run folder {run_dir}")
        print(f"curves: {write_curves(run_dir)}")
    except PlotError as exc:  # e.g. logging.loggers without jsonl: nothing to read back
        print(f"done; run folder {run_dir} ({exc})")


def interrupted_line(done: int, total: int, ckpt: Path | None, args: list[str],
                     run_name: str | None, folder_name: str, every: int = 0) -> str:
    """What a Ctrl-C ends with: the step reached, the newest checkpoint and the
    command that resumes this very run (its name added when the config left it
    to a timestamp, so `--resume auto` cannot pick another run).

    >>> interrupted_line(5, 16, Path("runs/r/checkpoints/step-000004"), ["a.yaml"], None, "r", 2)
    'interrupted after step 5 of 16; newest checkpoint runs/r/checkpoints/step-000004; resume with: rlft train a.yaml logging.run_name=r --resume auto'
    >>> interrupted_line(1, 16, None, ["a.yaml", "--resume", "auto"], None, "r")
    'interrupted after step 1 of 16; no checkpoint to resume (checkpoint.every=0 saves only at the end; set checkpoint.every=N to save along the way); start again with: rlft train a.yaml'
    """
    head = f"interrupted after step {done} of {total}"
    if ckpt is None:
        when = "only at the end" if every == 0 else f"every {every} steps"
        hint = "; set checkpoint.every=N to save along the way" if every == 0 else ""
        return (f"{head}; no checkpoint to resume (checkpoint.every={every} saves {when}{hint}); "
                f"start again with: {_command(_without_resume(args))}")
    again = _without_resume(args) + ([] if run_name else [f"logging.run_name={folder_name}"])
    return f"{head}; newest checkpoint {ckpt}; resume with: {_command(again)} --resume auto"


def _command(args: list[str]) -> str:
    return " ".join(["rlft train", *([shlex.join(args)] if args else [])])


def _export(args: list[str], opts: Options) -> int:
    p = argparse.ArgumentParser(prog="rlft export")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    ns = p.parse_args(args)
    from rlft.commands.export import export_run

    out = export_run(ns.run_dir, ns.out_dir)
    print(f"exported {out}")
    return 0


COMMANDS: dict[str, Callable[[list[str], Options], int]] = {
    "train": _train, "sft": _lazy("rlft.commands.sft"), "reward": _reward, "export": _export,
    "eval": _lazy("rlft.commands.evaluate"), "config": _config,
    "plot": _lazy("rlft.commands.plot"), "runs": _lazy("rlft.commands.runs"),
}


if __name__ == "__main__":
    sys.exit(main())
