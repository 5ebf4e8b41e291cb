"""rlft.models: aliases, the cache's atomic build, folders and hub ids."""

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from rlft import models
from rlft.models import (
    MARKER,
    TINY_SEED,
    build_version,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
    tiny_model_config,
)


def test_tiny_random_folder_is_complete_and_plain(tiny_model_path):
    folder = Path(tiny_model_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # vLLM would read it as a GGUF checkpoint
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["intermediate_size"]) == (64, 2, 2, 1, 128)  # head_dim 32: vLLM CPU has no 16
    assert config["vocab_size"] == 49152 and config["tie_word_embeddings"] is True
    assert json.loads((folder / MARKER).read_text())["version"] == build_version("tiny-random")
    assert resolve_model("tiny-random") == tiny_model_path  # cached: same folder


def test_tiny_random_weights_are_the_seeded_init(tiny_model_path):
    # Rebuilding the model from the same config and seed gives the cached
    # weights bit for bit, so every machine's tiny model is the same.
    tok = load_tokenizer(tiny_model_path)
    cfg = tiny_model_config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        fresh = LlamaForCausalLM(cfg).state_dict()
    saved = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    assert set(saved) <= set(fresh) and len(saved) >= 19  # 2 layers x 9 + norm (+ embed)
    for name, tensor in saved.items():
        assert torch.equal(tensor, fresh[name]), name


def test_tokenizer_has_pad_left_padding_and_chat_template(tiny_model_path):
    tok = load_tokenizer("tiny-random")
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert tok.padding_side == "left"
    text = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and "What is 12 + 7?" in text


def test_load_causal_lm_dtype(tiny_model_path):
    model = load_causal_lm(tiny_model_path, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied


def test_local_folder_and_hub_id(tmp_path, tiny_model_path):
    assert resolve_model(tiny_model_path) == tiny_model_path
    with pytest.raises(FileNotFoundError, match="without config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such folder.*tiny-random"):
        resolve_model(str(tmp_path / "missing"))
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id passes through


@pytest.fixture
def fake_alias(tmp_path, monkeypatch, tiny_model_path):
    """A cheap builder (copies the tiny model) under a private cache, counting builds."""
    monkeypatch.setenv("RLFT_CACHE", str(tmp_path / "cache"))
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        for f in Path(tiny_model_path).iterdir():
            if f.name != MARKER:
                shutil.copy(f, out / f.name)

    monkeypatch.setitem(models.BUILDERS, "fake", build)
    return calls, tmp_path / "cache" / "models"


def test_concurrent_callers_build_once(fake_alias):
    calls, root = fake_alias
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model("fake")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [str(root / "fake")] * 4
    assert len(calls) == 1  # the lock made the other three wait, then reuse
    assert sorted(p.name for p in root.iterdir()) == [".fake.lock", "fake"]  # no temp dirs left


def test_failed_build_leaves_nothing_and_stale_folder_is_rebuilt(fake_alias, monkeypatch):
    calls, root = fake_alias
    good = models.BUILDERS["fake"]

    def broken(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("interrupted")

    monkeypatch.setitem(models.BUILDERS, "fake", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        resolve_model("fake")
    assert not any(p.is_dir() for p in root.iterdir())  # neither the folder nor a temp dir

    monkeypatch.setitem(models.BUILDERS, "fake", good)
    folder = Path(resolve_model("fake"))
    (folder / MARKER).write_text(json.dumps({"alias": "fake", "version": build_version("fake") - 1}))
    (folder / "leftover.txt").write_text("from an older build")
    assert resolve_model("fake") == str(folder)
    assert len(calls) == 2 and not (folder / "leftover.txt").exists()  # rebuilt, not trusted
