"""Where a run's logs go: rlft on the console, the rest in the run folder.

By default (`ConsoleRouting(verbose=False)`, what `rlft train` uses) the
console shows rlft's own lines (progress bar, step lines, INFO, warnings,
errors), rlft warnings and errors raised inside the workers, Ray's node
messages (a worker killed, memory pressure) and other libraries' errors.
Everything goes to the run folder's `logs/`:

- `driver.log`: this process's logging (rlft, Ray's driver messages,
  transformers, datasets, Python warnings), from the start of the command;
- `workers.log`: every Ray worker's stdout and stderr, each line prefixed
  `(Actor pid=N)` (with `, ip=` when it runs on another node than the
  driver's): the rollout workers and vLLM's engine core process below
  them, the learners, the reward service.

`--verbose` shows everything on the console as well, as Ray prints it.

How: a handler on the root logger, to which the libraries that print by
themselves (Ray, transformers) are made to propagate; Ray's stream of worker
output (`log_to_driver`) handed to our handler instead of Ray's printer, once
Ray has started (`ray_started`, called by the wiring); in the workers
(`worker_logging`, Ray's worker_process_setup_hook) rlft's loggers print
`rlft.x LEVEL message` so their warnings can be told apart.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
WORKER_FORMAT = "%(name)s %(levelname)s %(message)s"  # in the workers: no time, Ray adds none
# A worker's rlft record as `worker_logging` prints it: shown on the console.
WORKER_RLFT = re.compile(r"^rlft(?:\.[\w.]+)? (?:WARNING|ERROR|CRITICAL) ")
WORKER_SETUP = "rlft.run.console.worker_logging"  # Ray's worker_process_setup_hook
# Libraries that attach their own console handler and do not propagate.
SELF_PRINTING = ("ray", "transformers")
RAY_PRINTER = "ray_print_logs"  # Ray's handler name for worker output
OURS = "rlft_worker_logs"
# Opens the console line the wiring prints once Ray is up and the actors start
# loading: a user sees start-up move on, and tests/faults time start-up kills by it.
RAY_UP = "Ray is up"

_active: ConsoleRouting | None = None


def worker_logging() -> None:
    """In each Ray worker: rlft's records, INFO and up, to stderr as
    `rlft.x LEVEL message` (the driver picks out warnings by that shape)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(WORKER_FORMAT))
    rlft = logging.getLogger("rlft")
    rlft.addHandler(handler)
    rlft.setLevel(logging.INFO)
    rlft.propagate = False


class _BarSafeHandler(logging.StreamHandler):
    """Console lines that clear the progress bar first and redraw it after."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write(self.format(record), self.stream)
        except Exception:  # noqa: BLE001  (logging's contract: report, never raise)
            self.handleError(record)


def _write(line: str, stream: TextIO) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=stream)


class _ConsoleFilter(logging.Filter):
    """rlft's records from INFO up; other libraries' only from ERROR up (quiet)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == "rlft" or record.name.startswith("rlft.")
        return self.verbose or own or record.levelno >= logging.ERROR


class ConsoleRouting:
    """A context manager for one command; `attach(folder)` once the run folder
    is known (records before that are kept in memory and written then)."""

    def __init__(self, verbose: bool = False, console: TextIO | None = None) -> None:
        self.verbose = verbose
        self.console = console or sys.stderr
        self.log_dir: Path | None = None
        self._lock = threading.Lock()
        self._workers: TextIO | None = None
        self._ray_printer: Any = None
        self._saved: dict[str, Any] = {}
        self._driver_ip: str | None = None  # a worker elsewhere gets `ip=` in its prefix

    # -- lifecycle ----------------------------------------------------------
    def __enter__(self) -> ConsoleRouting:
        global _active
        root = logging.getLogger()
        self._saved["root"] = (root.handlers[:], root.level)
        console = _BarSafeHandler(self.console)
        console.setFormatter(logging.Formatter(FORMAT))
        console.addFilter(_ConsoleFilter(self.verbose))
        self.buffer = logging.handlers.MemoryHandler(capacity=100_000,
                                                     flushLevel=logging.CRITICAL + 1)
        root.handlers = [console, self.buffer]
        root.setLevel(logging.INFO)
        for name in SELF_PRINTING:
            lg = logging.getLogger(name)
            self._saved[name] = (lg.handlers[:], lg.propagate)
            lg.handlers = [h for h in lg.handlers if isinstance(h, logging.FileHandler)
                           or not isinstance(h, logging.StreamHandler)]
            lg.propagate = True
        logging.captureWarnings(True)
        # Quiet: no download/loading bars of a library in this process.
        self._saved["bars"] = _progress_bars(None if self.verbose else False)
        _active = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = None
        self._stop_worker_stream()
        logging.captureWarnings(False)
        _progress_bars(self._saved["bars"])
        for name in SELF_PRINTING:
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate = self._saved[name]
        root = logging.getLogger()
        for h in root.handlers:
            h.close()
        root.handlers, level = self._saved["root"]
        root.setLevel(level)
        with self._lock:
            if self._workers is not None:
                self._workers.close()

    def attach(self, run_dir: Path) -> None:
        """Start the files in `run_dir/logs/`; what was logged so far goes first.
        The first run folder of the command wins."""
        if self.log_dir is not None:
            return
        self.log_dir = Path(run_dir) / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        driver = logging.FileHandler(self.log_dir / "driver.log", encoding="utf-8")
        driver.setFormatter(logging.Formatter(FORMAT))
        self.buffer.setTarget(driver)
        self.buffer.flush()
        root = logging.getLogger()
        root.removeHandler(self.buffer)
        root.addHandler(driver)
        self._workers = open(self.log_dir / "workers.log", "a", buffering=1, encoding="utf-8")
        if not self.verbose:
            logging.getLogger("rlft").info("logs of Ray, vLLM and the workers: %s "
                                           "(--verbose shows them here)", self.log_dir)

    # -- Ray's worker output ---------------------------------------------------
    def ray_started(self) -> None:
        """Take over Ray's stream of worker output (Ray must have started with
        log_to_driver=True): to workers.log; quiet, Ray's printer stops."""
        if self._workers is None:
            return  # no run folder: Ray prints as usual
        try:  # Ray's own hand-over point for worker output (not a public API)
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as streams
        except ImportError:
            logging.getLogger("rlft").warning(
                "this Ray version has no worker-output dispatcher rlft knows: the workers' "
                "logs stay on the console and in Ray's session folder")
            return
        import ray

        self._driver_ip = ray.util.get_node_ip_address()
        streams.remove_handler(OURS)
        streams.add_handler(OURS, self._worker_lines)
        if not self.verbose:
            printer = [h for name, h in streams.handlers if name == RAY_PRINTER]
            self._ray_printer = self._ray_printer or (printer[0] if printer else None)
            streams.remove_handler(RAY_PRINTER)

    def _stop_worker_stream(self) -> None:
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as streams
        except ImportError:
            return
        streams.remove_handler(OURS)
        if self._ray_printer is not None:  # Ray goes on printing for whoever runs next
            streams.add_handler(RAY_PRINTER, self._ray_printer)
            self._ray_printer = None

    def _worker_lines(self, data: dict[str, Any]) -> None:
        pid = data.get("pid")
        who = data.get("actor_name") or data.get("task_name") or "worker"
        ip = data.get("ip")
        where = f", ip={ip}" if ip and ip != self._driver_ip else ""  # on a cluster: which node
        prefix = f"({pid}{where})" if pid in ("raylet", "autoscaler") else f"({who} pid={pid}{where})"
        lines = data.get("lines") or ()
        if pid == "autoscaler":  # its status table every 5 s: only the events, as Ray shows
            lines = _autoscaler_events(lines)
        with self._lock:
            if self._workers is not None and not self._workers.closed:
                self._workers.writelines(f"{prefix} {line}\n" for line in lines)
        if self.verbose:
            return  # Ray's own printer shows them
        for line in lines:  # rlft's warnings from workers, and Ray's node messages
            if WORKER_RLFT.match(line) or pid in ("raylet", "autoscaler"):
                _write(f"{prefix} {line}", self.console)


def attach(run_dir: Path) -> None:
    """The run folder is known: start its logs (no-op outside a routing)."""
    if _active is not None:
        _active.attach(run_dir)


def ray_started() -> None:
    """Ray is up: route its worker output (no-op outside a routing)."""
    if _active is not None:
        _active.ray_started()


def _autoscaler_events(lines: list[str]) -> list[str]:
    """The autoscaler's events (scaling, failures), marked as Ray marks them;
    its status table, published every few seconds, is left out as Ray does.

    >>> _autoscaler_events(["Node status", "x :event_summary:Adding 1 node(s)"])
    ['Adding 1 node(s)']
    """
    token = ":event_summary:"
    return [line.split(token, 1)[1] for line in lines if token in line]


def _progress_bars(on: bool | None) -> bool:
    """transformers' and datasets' progress bars on/off in this process; None
    only reads. Returns whether they were on."""
    import datasets
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if on is True:
        hf_logging.enable_progress_bar()
        datasets.enable_progress_bars()
    elif on is False:
        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    return was
