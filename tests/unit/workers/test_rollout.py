"""HFEngine on the tiny random model: shapes, groups, log-probs, trimming,
stop strings, prefixes, seeding; one slow test on the real SmolLM2."""

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from rlft.models import load_tokenizer, resolve_model
from rlft.registry import RegistryError
from rlft.types import Prompt, PromptBatch
from rlft.workers.rollout import HFEngine, RolloutWorker, SamplingParams, cut_response, stop_hit

GREEDY = SamplingParams(temperature=0, max_new_tokens=8)


def make_prompt(tok, text: str, uid: str = "p") -> Prompt:
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    return Prompt(uid=uid, text=rendered, prompt_ids=tuple(ids))


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    return HFEngine(tiny_model_path, seed=0)


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return load_tokenizer(tiny_model_path)


@pytest.fixture(scope="module")
def prompts(tok):
    # Different lengths, so batching pads on the left.
    return [make_prompt(tok, t, str(i)) for i, t in
            enumerate(["Hi", "What is 12 + 7?", "Name three prime numbers above one hundred."])]


def reference_logprobs(model, prompt_ids, response_ids, temperature=1.0) -> list[float]:
    """Loop reference: one unpadded forward pass per sample, full log_softmax
    of logits / temperature."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])  # [1, P+T]
    with torch.no_grad():
        logp = (model(input_ids=ids).logits[0].float() / temperature).log_softmax(-1)  # [P+T, V]
    p = len(prompt_ids)
    return [logp[p + t - 1, tok_id].item() for t, tok_id in enumerate(response_ids)]


def test_shapes_groups_masks_and_version(engine, tok, prompts):
    batch = PromptBatch(prompts=tuple(prompts), prefix_ids=((), (), ()), group_id=(7, 8, 9), n=2)
    out = engine.generate(batch, SamplingParams(max_new_tokens=6, seed=0))
    assert len(out) == 6  # 3 requests x n=2
    assert out.prompt_index == (0, 0, 1, 1, 2, 2)
    assert out.group_id == (7, 7, 8, 8, 9, 9)  # samples of a request share its group
    assert out.prompt_ids == tuple(prompts[i].prompt_ids for i in out.prompt_index)
    assert out.prefix_len == (0,) * 6 and out.policy_version == 0
    for b in range(6):
        resp = out.response_ids[b]
        assert 1 <= len(resp) <= 6 and len(out.rollout_logprobs[b]) == len(resp)
        assert out.finish_reason[b] == ("stop" if resp[-1] in engine.eos_ids else "length")
        assert engine.pad_id not in resp[:-1]  # no padding left inside a response
        assert out.response_text[b] == tok.decode(resp, skip_special_tokens=True)
        assert all(lp <= 0 for lp in out.rollout_logprobs[b])
    engine.set_version(3)
    try:
        assert engine.generate(batch, GREEDY).policy_version == 3
    finally:
        engine.set_version(0)


def test_rollout_logprobs_equal_an_independent_forward(engine, prompts):
    # Sampled at temperature 0.7 / top-p 0.9, reported under the tempered
    # distribution softmax(logits / 0.7) (before top-p), what the learner scores.
    batch = PromptBatch.plain(prompts, n=2)
    out = engine.generate(batch, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=8,
                                                seed=1))
    for b in range(len(out)):
        want = reference_logprobs(engine.model, out.prompt_ids[b], out.response_ids[b], 0.7)
        assert out.rollout_logprobs[b] == pytest.approx(want, abs=1e-4)
        raw = reference_logprobs(engine.model, out.prompt_ids[b], out.response_ids[b])
        assert out.rollout_logprobs[b] != pytest.approx(raw, abs=1e-2)


def test_left_padded_batch_greedy_equals_one_row_at_a_time(engine, prompts):
    together = engine.generate(PromptBatch.plain(prompts, n=1), GREEDY).response_ids
    alone = [engine.generate(PromptBatch.plain([p], n=1), GREEDY).response_ids[0]
             for p in prompts]
    assert list(together) == alone
    engine.max_batch = 1  # chunked into one-row generate calls: same answer
    try:
        assert engine.generate(PromptBatch.plain(prompts, n=1), GREEDY).response_ids == together
    finally:
        engine.max_batch = 64


def test_seeded_sampling_reproduces_and_leaves_global_rng_alone(engine, prompts):
    batch = PromptBatch.plain(prompts[:1], n=4)
    params = SamplingParams(max_new_tokens=6, seed=5)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = engine.generate(batch, params)
    assert torch.equal(torch.rand(1), expected_next)  # generate forked the RNG
    assert engine.generate(batch, params).response_ids == a.response_ids
    assert len(set(a.response_ids)) > 1  # n samples of one request differ
    other = engine.generate(batch, SamplingParams(max_new_tokens=6, seed=6))
    assert other.response_ids != a.response_ids
    unseeded = SamplingParams(max_new_tokens=6)
    assert engine.generate(batch, unseeded).response_ids != \
        engine.generate(batch, unseeded).response_ids  # the engine's stream advances


def test_tiny_top_p_is_greedy(engine, prompts):
    batch = PromptBatch.plain(prompts, n=1)
    nucleus = engine.generate(batch, SamplingParams(top_p=1e-6, max_new_tokens=8, seed=0))
    assert nucleus.response_ids == engine.generate(batch, GREEDY).response_ids


def test_no_hidden_top_k(engine, prompts):
    # transformers' global default is top_k=50. The tiny random model is near
    # uniform over 49k tokens, so 24 samples all from its top 50 would mean the
    # default leaked in (chance without it: about (50/49152)^24).
    out = engine.generate(PromptBatch.plain(prompts[:1], n=3),
                          SamplingParams(max_new_tokens=8, seed=2))
    ranks = []
    for b in range(len(out)):
        ids = torch.tensor([list(out.prompt_ids[b]) + list(out.response_ids[b])])
        with torch.no_grad():
            logits = engine.model(input_ids=ids).logits[0]  # [P+T, V]
        p = len(out.prompt_ids[b])
        for t, tok_id in enumerate(out.response_ids[b]):
            ranks.append(int((logits[p + t - 1] > logits[p + t - 1, tok_id]).sum()))
    assert max(ranks) > 50


def test_cut_response_by_hand(tok):
    eos = {2}
    assert cut_response([5, 6, 2, 2, 2], eos, tok, ()) == (3, "stop")  # EOS kept, pads dropped
    assert cut_response([2], eos, tok, ()) == (1, "stop")
    assert cut_response([5, 6, 7], eos, tok, ()) == (3, "length")
    ids = tok("ab\n\ncd\n\n", add_special_tokens=False)["input_ids"]
    n, why = cut_response(ids + [2], eos, tok, ("\n\n",))
    assert why == "stop" and tok.decode(ids[:n]).endswith("\n\n") and "cd" not in \
        tok.decode(ids[:n])  # cut at the first completion, the stop string kept
    assert stop_hit(tok, ids, ("cd",)) is False  # "cd" is not at the end
    assert stop_hit(tok, ids[:-1], ("cd",)) is True


def test_eos_trimming_with_a_second_eos_token(tmp_path, tiny_model_path, engine, prompts):
    # Chat models list several EOS ids in generation_config.json. Declaring
    # the token greedy decoding emits third as one makes that row stop there.
    greedy = [engine.generate(PromptBatch.plain([p], n=1), GREEDY).response_ids[0]
              for p in prompts[:2]]
    g0 = greedy[0]
    extra = next(t for k, t in enumerate(g0) if k >= 2 and t not in g0[:k])
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    gen_cfg = json.loads((folder / "generation_config.json").read_text())
    gen_cfg["eos_token_id"] = [engine.tok.eos_token_id, extra]
    (folder / "generation_config.json").write_text(json.dumps(gen_cfg))
    two_eos = HFEngine(str(folder))
    out = two_eos.generate(PromptBatch.plain(prompts[:2], n=1), GREEDY)
    for b, g in enumerate(greedy):
        stops = [k for k, t in enumerate(g) if t in (extra, engine.tok.eos_token_id)]
        want = g[:stops[0] + 1] if stops else g
        assert out.response_ids[b] == want  # the EOS is the last response token
        assert out.finish_reason[b] == ("stop" if stops else "length")
        assert len(out.rollout_logprobs[b]) == len(want)
    assert out.finish_reason[0] == "stop" and len(out.response_ids[0]) >= 3


def test_stop_strings(engine, tok, prompts):
    g = engine.generate(PromptBatch.plain(prompts[:1], n=1), GREEDY).response_ids[0]
    stop = next(s for s in (tok.decode([t]) for t in g[2:]) if s.strip())
    assert stop not in tok.decode(list(g[:2]))  # so the cut lands past the second token
    # Loop reference: the shortest generated prefix whose text contains it.
    k = next(k for k in range(len(g)) if stop in tok.decode(list(g[:k + 1])))
    out = engine.generate(PromptBatch.plain(prompts[:1], n=1),
                          SamplingParams(temperature=0, max_new_tokens=8, stop=(stop,)))
    assert out.response_ids[0] == g[:k + 1] and out.finish_reason == ("stop",)
    assert out.response_text[0].endswith(stop)


def test_prefix_continuation(engine, tok, prompts):
    prefix = tuple(tok("The answer is", add_special_tokens=False)["input_ids"])
    batch = PromptBatch(prompts=tuple(prompts[:2]), prefix_ids=(prefix, ()), group_id=(0, 1),
                        n=2)
    out = engine.generate(batch, GREEDY)
    assert out.prefix_len == (len(prefix),) * 2 + (0,) * 2
    plain_continuation = engine.generate(PromptBatch.plain(
        [Prompt("c", "", prompts[0].prompt_ids + prefix)], n=1), GREEDY).response_ids[0]
    for b in range(2):
        assert out.response_ids[b][:len(prefix)] == prefix  # reported as the response's start
        assert out.response_ids[b][len(prefix):] == plain_continuation
        assert len(out.response_ids[b]) <= len(prefix) + GREEDY.max_new_tokens
    for b in range(4):  # prefix tokens scored too, by the same forward pass
        want = reference_logprobs(engine.model, out.prompt_ids[b], out.response_ids[b])
        assert out.rollout_logprobs[b] == pytest.approx(want, abs=1e-4)


def test_bad_inputs_name_the_field(engine, tiny_model_path):
    with pytest.raises(ValueError, match="prompt 0 .*no prompt_ids"):
        engine.generate(PromptBatch.plain([Prompt("e", "", ())], n=1), GREEDY)
    with pytest.raises(ValueError, match="max_new_tokens=2048 tokens exceed the model's "
                                         "context of 2048; lower rollout.max_new_tokens"):
        engine.generate(PromptBatch.plain([Prompt("e", "", (1, 2))], n=1),
                        SamplingParams(max_new_tokens=2048))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=["\n"])  # a list would make the params unhashable
    with pytest.raises(RegistryError, match="Valid names: hf"):
        RolloutWorker(engine="hff", model_path=tiny_model_path)
    if importlib.util.find_spec("rlft.workers.vllm_engine") is None:
        with pytest.raises(ValueError, match="rollout.engine=hf"):
            RolloutWorker(engine="vllm", model_path=tiny_model_path)


@pytest.mark.gpu
def test_cuda_engine_matches_cpu(engine, tiny_model_path, prompts):
    gpu = HFEngine(tiny_model_path, device="cuda")
    batch = PromptBatch.plain(prompts, n=1)
    a, b = engine.generate(batch, GREEDY), gpu.generate(batch, GREEDY)
    assert a.response_ids == b.response_ids
    for x, y in zip(a.rollout_logprobs, b.rollout_logprobs):
        assert x == pytest.approx(y, abs=1e-3)


@pytest.mark.slow
def test_smollm2_answers_a_question():
    start = time.perf_counter()
    path = resolve_model("smollm2-135m-instruct")  # converts once (~1 min), then cached
    resolved = time.perf_counter() - start
    assert (Path(path) / "model.safetensors").is_file()
    start = time.perf_counter()
    assert resolve_model("smollm2-135m-instruct") == path
    assert time.perf_counter() - start < 1.0  # cached
    tok = load_tokenizer(path)
    eng = HFEngine(path)
    start = time.perf_counter()
    out = eng.generate(PromptBatch.plain([make_prompt(tok, "What is 12 + 7?")], n=1),
                       SamplingParams(temperature=0, max_new_tokens=32))
    generated = time.perf_counter() - start
    print(f"\nresolve {resolved:.1f}s, generate {generated:.1f}s: {out.response_text[0]!r}")
    assert any(ch.isdigit() for ch in out.response_text[0])  # it answers with a number
