"""`rlft` command line: train, reward check, export, config."""

from __future__ import annotations

import argparse
import logging
import sys

from rlft.commands.export import ExportError
from rlft.config import Config, ConfigError, describe, load_config, to_yaml

USAGE = """rlft COMMAND ...

commands:
  train [CONFIG.yaml] [key.sub=value ...] [--resume auto|CKPT] [--print-config]
  sft [CONFIG.yaml] [key.sub=value ...]                     supervised fine-tune on the rows' demonstrations (sft.*)
  reward check REWARD --data FILE [--completions FILE]   (see rlft reward check -h)
  export RUN_DIR OUT_DIR                                    Hugging Face folder of the newest checkpoint
  eval CONFIG|RUN_DIR [key.sub=value ...] [--k K] [--limit N] [--out DIR]
                                      pass@k and mean reward on data.eval_split (eval.json, eval.md)
  config                                                    every config key, its default and meaning
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "train":
            return _train(rest)
        if cmd == "reward" and rest[:1] == ["check"]:
            from rlft.commands.reward_check import main as reward_check

            return reward_check(rest[1:])
        if cmd == "export":
            return _export(rest)
        if cmd == "sft":
            from rlft.commands.sft import main as sft

            return sft(rest)
        if cmd == "eval":
            from rlft.commands.evaluate import main as evaluate

            return evaluate(rest)
        if cmd == "config":
            for path, default, help_ in describe(Config):
                print(f"{path:32} {default:28} {help_}")
            return 0
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"unknown command {' '.join(argv[:2])!r}\n\n{USAGE}", file=sys.stderr)
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


def _train(args: list[str]) -> int:
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
    import ray.exceptions

    from rlft.loop import TrainingLoop

    trainer = TrainingLoop(cfg, resume=ns.resume)
    try:
        history = trainer.train()
    except ray.exceptions.RayActorError as exc:
        print(f"\nA worker died: {exc}\nThe last complete checkpoint is intact; continue with:\n"
              f"  rlft train {' '.join(_without_resume(args))} --resume auto", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    if history:
        k = min(5, len(history))
        first = sum(m.reward_mean for m in history[:k]) / k
        last = sum(m.reward_mean for m in history[-k:]) / k
        print(f"done: {len(history)} steps, mean reward first {k} {first:.3f} -> last {k} "
              f"{last:.3f}; run folder {trainer.run.path}")
    return 0


def _export(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlft export")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    ns = p.parse_args(args)
    from rlft.commands.export import export_run

    out = export_run(ns.run_dir, ns.out_dir)
    print(f"exported {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
