"""Learner -> rollout engine weight transfer on one GPU, Qwen2-0.5B's shape.

In-process (no Ray): a `Learner` (bf16 compute, fp32 master weights) and an
`HFEngine` (bf16) share the GPU; the model is random-init, saved once to a
temporary folder with a synthetic word-level tokenizer (no downloads). Paths:
- host: `named_weights()` gathers full fp32 weights into host memory, the
  update is bucketed (`publish`, inline transport) and the engine copies each
  tensor back to the GPU: what `Learner.weight_update` does today, less Ray's
  object store;
- device: `named_weights(cpu=False)` keeps the full weights on the GPU, they
  are bucketed without a copy and the engine copies device to device (casting
  fp32 -> bf16 on the way).
- vllm (when vLLM imports and a GPU is present, or with --vllm): the host
  path into `VLLMEngine.load_weights`.
Each row is the median of --repeat transfers, split into gather (learner),
bucket and load (engine) seconds. Goal: <= 0.2 s in all.

    python benchmarks/bench_weight_sync.py
    python benchmarks/bench_weight_sync.py --small      # CPU smoke run, tiny shapes
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rlft.workers.learner import Learner, LearnerParams
from rlft.workers.rollout import HFEngine
from rlft.workers.weight_sync import WeightUpdate, bucketize, iter_update, publish

QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                 num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1e6)
# head_dim 32: vLLM's CPU attention wants a multiple of 32.
SMALL = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
             max_position_embeddings=4096)
EOS, PAD = 1, 0


def synthetic_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: id 0 "<pad>", 1 "</s>", then "w2".."w{V-1}"; any id
    decodes and text round-trips. (Special tokens match inside words, so none of
    them may be a substring of another word.)"""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = {"<pad>": PAD, "</s>": EOS, **{f"w{i}": i for i in range(2, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<pad>", pad_token="<pad>",
                                   eos_token="</s>")


def save_random_model(cfg: Qwen2Config, folder: str, device: torch.device,
                      seed: int = 0) -> str:
    """A random-init Qwen2 (bf16 on disk) + tokenizer folder that every engine loads."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=EOS, pad_token_id=PAD)
    model.save_pretrained(folder)
    synthetic_tokenizer(cfg.vocab_size).save_pretrained(folder)
    del model
    return folder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def transfer(lrn: Learner, load: Callable[[WeightUpdate], None], on_device: bool,
             bucket_bytes: int, version: int) -> tuple[float, float, float]:
    """One learner -> engine transfer: (gather, bucket, load) seconds."""
    dev = lrn.device
    named, t_gather = clock(lambda: list(lrn.named_weights(cpu=not on_device)), dev)
    if on_device:
        buckets = tuple(bucketize(named, bucket_bytes))  # no copy: views of the full weights
        update, t_bucket = clock(lambda: WeightUpdate(version, buckets, len(named), "inline"),
                                 dev)
    else:
        update, t_bucket = clock(lambda: publish(named, version, bucket_bytes, use_ray=False),
                                 dev)
    _, t_load = clock(lambda: load(update), dev)
    return t_gather, t_bucket, t_load


def run(name: str, lrn: Learner, load: Callable[[WeightUpdate], None], on_device: bool,
        args: argparse.Namespace) -> tuple[str, float, float, float]:
    times = [transfer(lrn, load, on_device, args.bucket_mb << 20, v)
             for v in range(args.warmup + args.repeat)][args.warmup:]
    med = [statistics.median(t[i] for t in times) for i in range(3)]
    return name, *med


def check_loaded(lrn: Learner, engine: HFEngine) -> None:
    """The engine now holds the learner's weights (in the engine's dtype)."""
    state = engine.model.state_dict()
    for name, tensor in lrn.named_weights():
        want = tensor.to(state[name].dtype)
        if not torch.equal(state[name].cpu(), want):
            raise AssertionError(f"weight {name} did not arrive intact")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke run)")
    ap.add_argument("--bucket-mb", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads on CPU (one: steadier on a busy machine)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--vllm", choices=("auto", "on", "off"), default="auto",
                    help="auto: when vLLM imports and a GPU is present")
    args = ap.parse_args(argv)
    cfg = Qwen2Config(**(SMALL if args.small else QWEN2_05B))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {gpu}; torch {torch.__version__}; model: Qwen2 "
          f"{'small' if args.small else '0.5B shape'}; bucket {args.bucket_mb} MiB\n"
          f"command: python {' '.join(sys.argv)}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_model(cfg, str(Path(tmp) / "model"), device)
        lrn = Learner(folder, LearnerParams(param_dtype=str(dtype).removeprefix("torch.")))
        try:
            numel = sum(t.numel() for _, t in lrn.named_weights())
            engine = HFEngine(folder, dtype=dtype, device=str(device))

            def load_hf(update: WeightUpdate) -> None:
                engine.load_weights(iter_update(update))

            rows.append(run("hf, host", lrn, load_hf, False, args))
            rows.append(run("hf, device", lrn, load_hf, True, args))
            check_loaded(lrn, engine)
            use_vllm = args.vllm == "on" or (args.vllm == "auto" and device.type == "cuda"
                                             and importlib.util.find_spec("vllm") is not None)
            if use_vllm:
                from rlft.workers.vllm_engine import VLLMEngine

                vllm = VLLMEngine(folder, dtype=dtype, gpu_memory_utilization=0.3)
                try:
                    rows.append(run("vllm, host", lrn,
                                    lambda u: vllm.load_weights(iter_update(u)), False, args))
                finally:
                    vllm.close()
            elif args.vllm == "auto":
                print("vllm: skipped (not importable, or no GPU; --vllm on forces it)")
        finally:
            lrn.shutdown()
    print(f"\n{numel / 1e6:.2f}M parameters, fp32 master -> {str(dtype)[6:]} engine; "
          f"median of {args.repeat}\n")
    print("| path | gather s | bucket s | load s | total s |\n| --- | ---: | ---: | ---: | ---: |")
    for name, g, b, ld in rows:
        print(f"| {name} | {g:.3f} | {b:.3f} | {ld:.3f} | {g + b + ld:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
