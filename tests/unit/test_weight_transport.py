"""rollout.weight_transport: how `auto` resolves and which explicit choices
are refused before any actor starts (rlft/run/wiring.py `weight_transport`)."""

import pytest

from rlft.config import ConfigError, load_config
from rlft.run.wiring import weight_transport


def _cfg(transport: str, mode: str = "split"):
    return load_config(None, [f"rollout.weight_transport={transport}", f"rollout.mode={mode}"])


@pytest.mark.parametrize("transport, mode, gpus, vllm, backend", [
    # auto: broadcast wherever it works (CPU: gloo; GPUs: split, vLLM's PyNccl)
    ("auto", "split", 0, True, "gloo"),
    ("auto", "colocated", 0, False, "gloo"),
    ("auto", "split", 1, True, "nccl"),
    ("auto", "colocated", 1, True, None),  # one GPU per learner/rollout pair: no NCCL link
    ("auto", "split", 1, False, None),
    ("ray", "split", 1, True, None),
    ("ray", "colocated", 0, False, None),
    ("broadcast", "split", 0, False, "gloo"),  # CPU: gloo needs no vLLM
    ("broadcast", "colocated", 0, True, "gloo"),
    ("broadcast", "split", 1, True, "nccl"),
])
def test_backend_resolution(transport, mode, gpus, vllm, backend):
    assert weight_transport(_cfg(transport, mode), gpus, vllm_installed=vllm) == backend


def test_default_is_auto_and_cpu_broadcasts_over_gloo():
    cfg = load_config(None, [])
    assert cfg.rollout.weight_transport == "auto"
    assert weight_transport(cfg, 0.0) == "gloo"


@pytest.mark.parametrize("mode, vllm, fix", [
    ("colocated", True, "rollout.mode=split"),
    ("split", False, "install vllm"),
])
def test_broadcast_that_cannot_work_names_the_field_and_the_fix(mode, vllm, fix):
    with pytest.raises(ConfigError, match="rollout.weight_transport") as err:
        weight_transport(_cfg("broadcast", mode), 1.0, vllm_installed=vllm)
    assert fix in str(err.value) and "rollout.weight_transport=ray" in str(err.value)


def test_unknown_transport_lists_the_choices():
    with pytest.raises(ConfigError, match="rollout.weight_transport.*auto, ray, broadcast"):
        load_config(None, ["rollout.weight_transport=nccl"])
