"""`rlft export`: a run's newest complete checkpoint as a Hugging Face folder.

The checkpoint holds the learner's DCP shards, not a model folder, so export
builds the learner in this process (a world of one, no Ray), loads the shards
(DCP reshards whatever world size wrote them) and has the learner write
`save_pretrained` output. The tokenizer is the run's `model.name` tokenizer,
saved unchanged, so `AutoModelForCausalLM.from_pretrained(out)` and
`AutoTokenizer.from_pretrained(out)` both work. `rlft_export.json` records
which run and checkpoint the folder came from.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rlft.config import Config, load_config

# torch, transformers and Ray are imported where used: the CLI imports this
# module for ExportError, and `rlft --help` should not take seconds.


class ExportError(RuntimeError):
    """The run folder cannot be exported; the message names the path and the fix."""


def run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The resolved config a run folder was trained with (its config.yaml)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run folder {str(run_dir)!r} does not exist; pass a folder that "
                          "`rlft train` made (<logging.run_dir>/<run name>)")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ExportError(f"{str(run_dir)!r} has no config.yaml, so it is not a run folder; pass "
                          "the folder that `rlft train` made (it holds config.yaml, "
                          "metrics.jsonl and checkpoints/)")
    return load_config(str(path), list(overrides))


def newest_checkpoint(run_dir: str | Path) -> Path:
    from rlft.run import checkpoint

    root = Path(run_dir) / "checkpoints"
    ckpt = checkpoint.latest(root)
    if ckpt is None:
        raise ExportError(f"no complete checkpoint under {str(root)!r} yet: runs save one every "
                          "checkpoint.every steps and at the end; wait for one, or continue the "
                          "run with `rlft train ... --resume auto`")
    return ckpt


def export_checkpoint(cfg: Config, ckpt: Path, out_dir: Path, merged: bool = True) -> Path:
    """Load `ckpt` into an in-process learner and write the HF folder `out_dir`
    (with LoRA: merged weights, or with `merged=False` a peft adapter folder)."""
    from transformers import AutoTokenizer

    from rlft.models import resolve_model
    from rlft.run.wiring import learner_params
    from rlft.workers.learner import Learner

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model(cfg.model.name)
    print(f"loading {cfg.model.name} and {ckpt} ...", file=sys.stderr)
    learner = Learner(model_path, learner_params(cfg), rank=0, world_size=1)
    try:
        learner.load(str(ckpt / "learner"))
        print(f"writing {out_dir} ...", file=sys.stderr)
        learner.export_hf(str(out_dir), merged=merged)
    finally:
        learner.shutdown()
    AutoTokenizer.from_pretrained(model_path).save_pretrained(str(out_dir))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (out_dir / "rlft_export.json").write_text(json.dumps(
        {"checkpoint": str(ckpt.resolve()), "step": state["step"],
         "policy_version": state["policy_version"], "base_model": cfg.model.name}, indent=1))
    return out_dir


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """The run's newest complete checkpoint as a Hugging Face model folder."""
    cfg = run_config(run_dir)
    return export_checkpoint(cfg, newest_checkpoint(run_dir), Path(out_dir),
                             merged=cfg.model.lora.export == "merged")
