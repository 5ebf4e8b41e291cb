"""The only place that touches `ray.remote` and cluster resources.

Workers (`RolloutWorker`, `RewardService`, `Learner`) are plain classes; this
module turns them into actors. The CPU default is one cluster of small actors
that run one after another (the loop is synchronous), so actors reserve no CPUs
and torch threads are set per actor instead of by Ray's scheduler.
"""

from __future__ import annotations

import ctypes.util
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import ray

# MKL's Conditional Numerical Reproducibility: otherwise MKL may choose code
# paths by data alignment and schedule work dynamically, so two runs of the same
# CPU matmul can differ in the last bits (bit-identical resume is promised on
# CPU). A SmolLM2 learner update took the same time with it (14.6-15.4 s).
MKL_REPRODUCIBLE = {} if "MKL_CBWR" in os.environ else {"MKL_CBWR": "AUTO,STRICT"}

# Ray prestarts one idle Python worker per CPU; ours run in the job's runtime env
# (the env_vars init_ray sets), which a worker started before it cannot serve, so they would
# only sit there (~90 MiB each, 16 on a 16-core node).
NO_PRESTART = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


def init_ray(address: str | None, num_cpus: int | None, setup_hook: str | None = None) -> None:
    """Join `address` (or RAY_ADDRESS); otherwise start a local cluster whose
    dashboard, if any, listens on loopback only. `setup_hook`: an import path
    every worker process runs first (Ray's worker_process_setup_hook)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Ray sets OMP_NUM_THREADS=1 in zero-CPU actors; our actors take turns, so
    # each may use every core while it runs.
    threads = str(num_cpus or os.cpu_count() or 1)
    wanted = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": threads, **MKL_REPRODUCIBLE}
    # A `ray job submit` runtime env already in force wins: Ray rejects a driver
    # whose runtime env sets the same variable differently.
    hook = {"worker_process_setup_hook": setup_hook} if setup_hook else {}
    if address:
        env = {"env_vars": {k: v for k, v in wanted.items() if k not in os.environ}, **hook}
        ray.init(address=address, runtime_env=env, log_to_driver=True)
    else:
        _loopback_only()
        ray.init(num_cpus=num_cpus, include_dashboard=False, dashboard_host="127.0.0.1",
                 runtime_env={"env_vars": wanted, **hook}, log_to_driver=True,
                 _system_config=NO_PRESTART)


def _loopback_only() -> None:
    """Make a local cluster listen on 127.0.0.1 only.

    By default Ray gives a local node its outward IP, and its gRPC servers,
    agents and Prometheus metrics endpoint listen on every interface. Nothing
    outside this machine joins a cluster started here, so every service binds
    to loopback: Ray's switch for that is the node address it picks, read from
    this flag in the driver and from the variable in the processes it starts.
    """
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


# CPU actors' malloc: (library, Debian package, its settings). tcmalloc never
# hands freed pages back (release rate 0) and coalesces free spans, so an update
# reuses the last one's pages without first-touching them and without glibc's
# fragmented heap: the default run's learner held 5.4 GiB under glibc, 4.6 under
# tcmalloc (both at 1024-token micro-batches), at the same update time
# (benchmarks/bench_memory.py). Its report of single allocations over 1 GiB
# would only be noise in the logs.
ALLOCATORS = {
    "tcmalloc": ("tcmalloc_minimal", "libtcmalloc-minimal4",
                 {"TCMALLOC_RELEASE_RATE": "0", "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}),
    "jemalloc": ("jemalloc", "libjemalloc2", {}),
}


def allocator_env(name: str) -> dict[str, str]:
    """Environment that makes a new actor process use malloc `name` ("auto":
    tcmalloc where installed, else glibc's; "glibc": nothing to set).

    The library is preloaded by soname, so each node's dynamic loader finds its
    own copy. An allocator asked for by name but not installed is an error.

    >>> allocator_env("glibc")
    {}
    """
    if name == "glibc":
        return {}
    lib, package, settings = ALLOCATORS["tcmalloc" if name == "auto" else name]
    found = ctypes.util.find_library(lib)
    if found is None:
        if name == "auto":
            return {}
        raise FileNotFoundError(f"ray.cpu_allocator={name}: lib{lib} is not installed on "
                                f"this node; install it (apt-get install {package} on "
                                "Debian/Ubuntu), or set ray.cpu_allocator=glibc")
    return {"LD_PRELOAD": found, **settings}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rendezvous_address(handle: Any) -> tuple[str, int]:
    """(host, port) for a rendezvous that the actor `handle` hosts: its node's
    Ray address (127.0.0.1 on a local cluster, which `init_ray` keeps on
    loopback; the node's IP on a cluster, where peers on other nodes must reach
    it) and a port free there, picked in the actor's own process."""
    return ray.get(handle.__ray_call__.remote(_node_port))


def _node_port(instance: Any) -> tuple[str, int]:
    host = ray.util.get_node_ip_address()
    return host, free_port(host)


def join_world(ranks: list[Any]) -> str:
    """Form the process group of actors started with `defer_join=True` (rank r
    at index r): rank 0 hosts the rendezvous on its own node, at a port free
    there, and every rank joins it. Returns the address."""
    host, port = rendezvous_address(ranks[0])
    address = f"tcp://{host}:{port}"
    ray.get([r.join.remote(address) for r in ranks])
    return address


def node_ips(handles: list[Any]) -> list[str]:
    """The IP of the node each actor runs on."""
    return ray.get([h.__ray_call__.remote(lambda _: ray.util.get_node_ip_address())
                    for h in handles])


def actor(cls: type, *args: Any, num_cpus: float = 0, num_gpus: float = 0,
          max_restarts: int = 0, max_task_retries: int = 0,
          bundle: tuple[Any, int] | None = None, resources: dict[str, float] | None = None,
          env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """Start `cls(*args, **kwargs)` as an actor.

    `max_restarts`: Ray re-creates a dead actor with the same arguments (its
    state is lost: only for stateless actors or ones the caller re-syncs).
    `max_task_retries`: a call in flight when it died runs again on the new one.
    `bundle`: (placement group, bundle index) the actor must run in.
    `resources`: custom Ray resources it reserves (pins it to nodes that have them).
    `env`: environment variables of its process, on top of the job's.
    """
    opts: dict[str, Any] = {"resources": dict(resources)} if resources else {}
    if env:
        opts["runtime_env"] = {"env_vars": dict(env)}
    if bundle is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=bundle[0], placement_group_bundle_index=bundle[1])
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
                        max_task_retries=max_task_retries, **opts)(cls)
    return remote.remote(*args, **kwargs)


class PlacementTimeout(RuntimeError):
    """A placement group the cluster could not place in time."""


def gpu_bundles(n: int, extra: dict[str, float] | None = None, timeout_s: float = 120.0) -> Any:
    """A placement group of `n` one-GPU bundles, each also holding `extra`
    custom resources (colocated pools: the actors that share a GPU go into one
    bundle with fractional num_gpus). Waits until placed, `timeout_s` at most."""
    from ray.util.placement_group import placement_group

    bundle = {"GPU": 1, **(extra or {})}
    group = placement_group([bundle] * n, strategy="PACK")
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.util.remove_placement_group(group)
        raise PlacementTimeout(
            f"the cluster did not place {n} bundles of {bundle} (one per learner rank, shared "
            f"with its rollout workers) in {timeout_s:g} s; it holds "
            f"{describe_resources(ray.available_resources())} free: lower train.learner_workers, add GPUs, "
            "or raise ray.placement_timeout_s if nodes are still joining") from None
    return group


def describe_resources(resources: dict[str, float]) -> str:
    """Ray resources for a message: CPUs, GPUs and custom ones, not Ray's own.

    >>> describe_resources({"CPU": 2.0, "memory": 1e9, "node:10.0.0.2": 1.0, "trainer": 1.0})
    '2 CPU, 1 trainer'
    """
    shown = {k: v for k, v in resources.items()
             if not k.startswith(("node:", "memory", "object_store", "accelerator_type"))}
    return ", ".join(f"{v:g} {k}" for k, v in sorted(shown.items())) or "nothing"


@dataclass
class Pools:
    """Actor handles for one run."""

    rollout: list[Any]
    reward: Any
    learners: list[Any]
    critics: list[Any] = field(default_factory=list)  # PPO's value model ranks
    placement: Any = None  # the colocated pools' placement group, if any

    def kill(self) -> None:
        for handle in [*self.rollout, self.reward, *self.learners, *self.critics]:
            if handle is not None:
                ray.kill(handle)
        if self.placement is not None:
            ray.util.remove_placement_group(self.placement)


def gpus_per_actor() -> float:
    """One GPU per learner rank / rollout worker on GPU clusters, none on CPU."""
    resources = ray.cluster_resources()
    return 1.0 if resources.get("GPU", 0) >= 1 else 0.0
