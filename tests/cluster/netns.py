"""A Ray cluster of several nodes on one machine, each node in its own network
namespace with its own IP, temp dir and model cache.

The namespaces hang off a bridge that lives in a namespace of its own, so
nothing is added to the host's network: every address is on a link this module
creates, and `close()` deletes the namespaces (and with them the links) even
after a failure. Each node is `ray start --block` in its own process group,
run through `ip netns exec`; stopping a node kills exactly its processes (never
`ray stop`, which would end every Ray on the machine).

Needs root and iproute2's `ip`; `missing()` says what is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent  # .venv/bin: ray, rlft
SUBNET = "10.213.{}.{}"


def missing() -> str | None:
    """Why this machine cannot build the cluster, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (apt-get install iproute2)"
    probe = f"rlftprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Node:
    name: str
    netns: str
    ip: str
    folder: Path  # temp dir and model cache of this node only
    proc: subprocess.Popen | None = None

    @property
    def cache(self) -> Path:
        return self.folder / "cache"

    def exec(self, cmd: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.netns, *cmd], env=env, **kw)

    def stop(self) -> None:
        """Kill this node's Ray processes: its process group, then anything left
        in its namespace (the raylet's workers start sessions of their own)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        pids = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


@dataclass
class Cluster:
    """Head + workers; `resources[i]` are node i's custom Ray resources."""

    resources: list[dict[str, float]]
    num_cpus: int = 2
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    nodes: list[Node] = field(default_factory=list)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"rlft-ns{self.tag}-", dir="/tmp"))
        self.shared = self.root / "shared"  # the one folder every node may use: checkpoints
        self.shared.mkdir()
        self.switch = f"rlft{self.tag}sw"
        self.subnet = SUBNET.format(int(self.tag, 16) % 200 + 20, "{}")

    # -- network -----------------------------------------------------------
    def _links(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i in range(len(self.resources)):
            self._node_links(i, f"rlft{self.tag}n{i}")

    def _node_links(self, i: int, ns: str) -> None:
        """Namespace `ns` with eth0 (a veth) on the bridge, address .i+1."""
        _ip("netns", "add", ns)
        folder = self.root / f"node{i}"
        folder.mkdir()
        node = Node(f"node{i}", ns, self.subnet.format(i + 1), folder)
        self.nodes.append(node)  # from here on close() removes it
        _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"port{i}",
            "netns", self.switch)
        _ip("-n", ns, "addr", "add", f"{node.ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "set", f"port{i}", "master", "br0")
        _ip("-n", self.switch, "link", "set", f"port{i}", "up")

    # -- ray -----------------------------------------------------------------
    def env(self, node: Node) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RLFT_"))}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   RAY_USAGE_STATS_ENABLED="0", RLFT_CACHE=str(node.cache),
                   # A killed node is declared dead in ~3 s instead of ~15 s.
                   RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
                   RAY_health_check_failure_threshold="3",
                   HOME=str(node.folder), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        return env

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def dashboard(self) -> str:
        return f"http://{self.head.ip}:8265"

    def start_node(self, i: int) -> None:
        node = self.nodes[i]
        cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address", node.ip,
               "--num-cpus", str(self.num_cpus), "--temp-dir", str(node.folder / "ray"),
               "--resources", json.dumps(self.resources[i]), "--disable-usage-stats"]
        if i == 0:
            cmd += ["--head", "--port", "6379", "--dashboard-host", node.ip,
                    "--include-dashboard", "true"]
        else:
            cmd += ["--address", f"{self.head.ip}:6379"]
        log = open(node.folder / "ray-start.log", "a")
        node.proc = subprocess.Popen(["ip", "netns", "exec", node.netns, *cmd],
                                     env=self.env(node), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def start(self, timeout_s: float = 120) -> Cluster:
        try:
            self._links()
            self.start_node(0)
            self.wait_for_nodes(1, timeout_s)
            for i in range(1, len(self.nodes)):
                self.start_node(i)
            self.wait_for_nodes(len(self.nodes), timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def api(self, path: str) -> object:
        """GET the head's dashboard API (from inside the head's namespace)."""
        out = self.head.exec(
            [sys.executable, "-c", "import sys,urllib.request as u;r=u.Request(sys.argv[1],"
             "headers={'Authorization':'Bearer '+sys.argv[2]});"
             "print(u.urlopen(r,timeout=5).read().decode())", self.dashboard + path, self.token],
            self.env(self.head), capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise OSError(out.stderr.strip().splitlines()[-1] if out.stderr else "no answer")
        return json.loads(out.stdout)

    def alive_ips(self) -> set[str]:
        nodes = self.api("/nodes?view=summary")["data"]["summary"]
        return {n["raylet"]["nodeManagerAddress"] for n in nodes
                if n["raylet"].get("state") == "ALIVE"}

    def wait_for_nodes(self, n: int, timeout_s: float) -> None:
        self.wait_for_nodes_alive(self.nodes[:n], timeout_s)

    def wait_for_nodes_alive(self, nodes: list[Node], timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        last = ""
        while time.time() < deadline:
            for node in nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(f"{node.name}'s `ray start` exited: "
                                       f"{(node.folder / 'ray-start.log').read_text()[-2000:]}")
            try:
                if {x.ip for x in nodes} <= self.alive_ips():
                    return
            except (OSError, KeyError, ValueError) as exc:
                last = str(exc)
            time.sleep(1)
        raise TimeoutError(f"Ray nodes {[x.name for x in nodes]} did not come up in "
                           f"{timeout_s} s ({last})")

    def add_node(self, resources: dict[str, float], timeout_s: float = 120) -> Node:
        """Start one more worker node (a fresh namespace and IP) and wait for it."""
        self.resources.append(resources)
        i = len(self.nodes)
        ns = f"rlft{self.tag}n{i}"
        self._node_links(i, ns)
        self.start_node(i)
        self.wait_for_nodes_alive([self.nodes[i]], timeout_s)
        return self.nodes[i]

    def start_job(self, entrypoint: str) -> str:
        """`ray job submit --no-wait` the shell command `entrypoint` to the head."""
        job = f"rlft-{uuid.uuid4().hex[:8]}"
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.dashboard,
               "--submission-id", job, "--no-wait", "--", "bash", "-c", entrypoint]
        deadline = time.time() + 90
        while True:  # the job API answers before the head's job agent has registered
            out = self.head.exec(cmd, self.env(self.head), capture_output=True, text=True,
                                 timeout=120)
            if out.returncode == 0:
                return job
            if "No available agent" not in out.stderr or time.time() > deadline:
                raise RuntimeError(f"ray job submit failed: {out.stdout}\n{out.stderr[-3000:]}")
            time.sleep(2)

    def wait_job(self, job: str, timeout_s: float) -> str:
        deadline = time.time() + timeout_s
        status = "PENDING"
        while time.time() < deadline:
            status = self.api(f"/api/jobs/{job}")["status"]
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(2)
        return f"{status} after {timeout_s:g} s"

    def job_logs(self, job: str) -> str:
        return self.api(f"/api/jobs/{job}/logs")["logs"]

    def submit(self, entrypoint: str, timeout_s: float) -> tuple[str, str]:
        """Submit, wait for the end; returns (final status, the job's logs)."""
        job = self.start_job(entrypoint)
        return self.wait_job(job, timeout_s), self.job_logs(job)

    def close(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        for ns in [n.netns for n in self.nodes] + [self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Cluster", "Node", "missing"]
