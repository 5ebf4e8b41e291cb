"""What the rollout config hands the engine (rlft/run/wiring.py `engine_kwargs`):
dtype, the vLLM engine's memory and process settings, and the transformers
engine refusing settings only vLLM understands. Pure config: no engine starts."""

import pytest
import torch

from rlft.config import ConfigError, load_config
from rlft.run.wiring import engine_kwargs


def test_rollout_config_reaches_the_engine_and_hf_refuses_vllm_settings():
    assert engine_kwargs(load_config(), "vllm") == dict(
        dtype="float32", tensor_parallel_size=1, kv_cache_gb=None, gpu_memory_utilization=0.9,
        sleep_mode=False, kv_cache_shape=(64, 256 + 24),  # 8 prompts x 8 samples, one worker
        enforce_eager=True,  # CPU: vLLM's CPU path runs eager
        in_process=True)  # CPU: engine core and worker inside the rollout actor
    cfg = load_config(None, ["rollout.mode=colocated", "model.dtype=bfloat16",
                             "rollout.kv_cache_gb=0.5", "rollout.gpu_memory_utilization=0.3"])
    got = engine_kwargs(cfg, "vllm")  # dtype auto = the learner's
    assert (got["dtype"], got["sleep_mode"], got["kv_cache_gb"],
            got["gpu_memory_utilization"]) == ("bfloat16", True, 0.5, 0.3)
    assert engine_kwargs(load_config(None, ["rollout.dtype=float16"]), "vllm")["dtype"] == \
        "float16"
    # The run's longest prompt sizes the CPU KV cache (capped by data.max_prompt_tokens).
    assert engine_kwargs(load_config(), "vllm", longest_prompt=70)["kv_cache_shape"] == (64, 94)
    assert engine_kwargs(load_config(), "vllm", longest_prompt=900)["kv_cache_shape"] == \
        (64, 280)
    # transformers takes the dtype and refuses what only vLLM understands.
    assert engine_kwargs(load_config(None, ["rollout.mode=colocated"]), "hf") == \
        {"dtype": torch.float32, "device": "cpu"}
    # On GPUs: model.dtype=auto is bfloat16, the transformers engine runs on the
    # actor's GPU, and engines sharing a GPU split gpu_memory_utilization.
    assert engine_kwargs(load_config(), "hf", gpu=True) == \
        {"dtype": torch.bfloat16, "device": "cuda"}
    got = engine_kwargs(load_config(None, ["rollout.mode=colocated"]), "vllm", gpu=True,
                        engines_per_gpu=2)
    assert (got["dtype"], got["gpu_memory_utilization"], got["in_process"],
            got["enforce_eager"]) == ("bfloat16", 0.25, False, False)  # GPUs: CUDA graphs
    # A dedicated rollout GPU (split mode) gives vLLM most of its memory by default.
    split = engine_kwargs(load_config(), "vllm", gpu=True)
    assert (split["gpu_memory_utilization"], split["enforce_eager"]) == (0.9, False)
    assert engine_kwargs(load_config(None, ["rollout.enforce_eager=true"]), "vllm",
                         gpu=True)["enforce_eager"]
    assert engine_kwargs(load_config(None, ["model.dtype=float32"]), "vllm",
                         gpu=True)["dtype"] == "float32"
    with pytest.raises(ConfigError, match=r"rollout.tensor_parallel_size=2, "
                                          r"rollout.kv_cache_gb=1.0: vLLM-only"):
        engine_kwargs(load_config(None, ["rollout.tensor_parallel_size=2",
                                         "rollout.kv_cache_gb=1"]), "hf")
    with pytest.raises(ConfigError, match="vllm_in_process=true runs one vLLM worker"):
        engine_kwargs(load_config(None, ["rollout.vllm_in_process=true",
                                         "rollout.tensor_parallel_size=2"]), "vllm", gpu=True)
    assert not engine_kwargs(load_config(None, ["rollout.vllm_in_process=false"]),
                             "vllm")["in_process"]
    with pytest.raises(ConfigError, match="tensor_parallel_size must be 1"):
        load_config(None, ["rollout.mode=colocated", "rollout.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match="rollout.mode: 'shared' is not valid"):
        load_config(None, ["rollout.mode=shared"])
