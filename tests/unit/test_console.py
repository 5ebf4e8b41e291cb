"""Issue 17 item 4: the console routing on its own (the whole run is in
tests/integration/test_console_run.py): what reaches the console, what the
run folder's logs get, and that everything is put back afterwards."""

from __future__ import annotations

import io
import logging

import ray  # noqa: F401  (configures the "ray" logger with its own console handler)

from rlft.run.console import WORKER_FORMAT, WORKER_RLFT, ConsoleRouting

STATUS = ["======== Autoscaler status: 2026-01-01 ========", "Node status", " 0.0/2.0 CPU"]


def _session(routing: ConsoleRouting, tmp_path) -> None:
    logging.getLogger("rlft").info("rlft info before the folder is known")
    logging.getLogger("transformers.modeling").warning("a library warning")
    logging.getLogger("ray").info("Started a local Ray instance.")
    routing.attach(tmp_path)
    logging.getLogger("rlft.sft").warning("an rlft warning")
    logging.getLogger("datasets").error("a library error")
    # What Ray's log stream hands its handlers: a worker's lines, the autoscaler's table.
    routing._worker_lines({"pid": 7, "actor_name": "Learner", "is_err": True,
                           "lines": ["Loading weights: 100%", "rlft.learner WARNING non-finite"]})
    routing._worker_lines({"pid": "autoscaler", "is_err": False, "lines": STATUS})
    routing._driver_ip = "10.0.0.1"  # what ray_started records; a worker on another node:
    routing._worker_lines({"pid": 9, "ip": "10.0.0.2", "actor_name": "RolloutWorker",
                           "is_err": False, "lines": ["engine ready"]})


def test_quiet_console_shows_rlft_and_errors_the_files_get_everything(tmp_path):
    root, ray_log = logging.getLogger(), logging.getLogger("ray")
    before = (root.handlers[:], root.level, ray_log.handlers[:], ray_log.propagate)
    out = io.StringIO()
    with ConsoleRouting(verbose=False, console=out) as routing:
        _session(routing, tmp_path)
    console = out.getvalue()
    for shown in ("rlft info before the folder is known", "an rlft warning", "a library error",
                  "(Learner pid=7) rlft.learner WARNING non-finite", "logs of Ray, vLLM"):
        assert shown in console, console
    for hidden in ("a library warning", "Started a local Ray", "Loading weights", "Autoscaler"):
        assert hidden not in console, console
    driver = (tmp_path / "logs" / "driver.log").read_text()
    for line in ("rlft info before the folder is known", "a library warning",
                 "Started a local Ray instance.", "an rlft warning", "a library error"):
        assert line in driver
    workers = (tmp_path / "logs" / "workers.log").read_text().splitlines()
    assert workers == ["(Learner pid=7) Loading weights: 100%",
                       "(Learner pid=7) rlft.learner WARNING non-finite",  # no status table
                       "(RolloutWorker pid=9, ip=10.0.0.2) engine ready"]
    assert (root.handlers, root.level, ray_log.handlers, ray_log.propagate) == before


def test_verbose_shows_everything(tmp_path):
    out = io.StringIO()
    with ConsoleRouting(verbose=True, console=out) as routing:
        _session(routing, tmp_path)
    console = out.getvalue()
    assert "a library warning" in console and "Started a local Ray instance." in console
    assert "a library warning" in (tmp_path / "logs" / "driver.log").read_text()


def test_worker_records_have_the_shape_the_driver_picks_out():
    def line(name: str, level: int) -> str:
        record = logging.LogRecord(name, level, __file__, 1, "msg", None, None)
        return logging.Formatter(WORKER_FORMAT).format(record)

    assert WORKER_RLFT.match(line("rlft.reward", logging.WARNING))
    assert WORKER_RLFT.match(line("rlft", logging.ERROR))
    assert not WORKER_RLFT.match(line("rlft.learner", logging.INFO))
    assert not WORKER_RLFT.match(line("vllm.engine", logging.WARNING))
