"""Bucketing, versioned updates (inline, through Ray, and broadcast over a
sync group), and an engine that takes another model's weights."""

import dataclasses
import os
import signal
import socket
import time
import types

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaForCausalLM

from rlft.models import load_tokenizer, tiny_model_config
from rlft.registry import RegistryError
from rlft.run.weight_push import WeightPush
from rlft.types import Prompt, PromptBatch
from rlft.workers.fingerprint import verified
from rlft.workers.rollout import HFEngine, RolloutWorker, SamplingParams
from rlft.workers.weight_sync import (
    GROUPS,
    BroadcastSender,
    WeightUpdate,
    bucketize,
    iter_update,
    publish,
    sync_ranks,
)


def named(*numels):
    """float32 tensors named a, b, c, ... with 4 * numel bytes each."""
    return [(chr(ord("a") + i), torch.full((n,), float(i))) for i, n in enumerate(numels)]


def nbytes(bucket):
    return sum(t.numel() * t.element_size() for _, t in bucket)


def test_bucketize_by_hand():
    # Bytes a=4, b=4, c=8, d=20, e=4; bucket 10 bytes:
    # a+b = 8 <= 10; +c = 16 > 10 -> close [a, b]
    # c = 8; +d = 28 > 10 -> close [c]
    # d = 20 > 10 on its own: a bucket of its own; +e = 24 > 10 -> close [d]
    # e = 4 -> [e]
    buckets = list(bucketize(named(1, 1, 2, 5, 1), bucket_bytes=10))
    assert [[n for n, _ in b] for b in buckets] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert [nbytes(b) for b in buckets] == [8, 8, 20, 4]
    assert list(bucketize([], 10)) == []
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(bucketize(named(1), 0))


def bucketize_loop(sizes, bucket_bytes):
    """Reference: start a new bucket whenever the next tensor would overflow."""
    out, cur, used = [], [], 0
    for i, size in enumerate(sizes):
        if cur and used + size > bucket_bytes:
            out.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += size
    return out + ([cur] if cur else [])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=20), st.integers(1, 200))
def test_bucketize_matches_loop_and_keeps_order(numels, bucket_bytes):
    items = named(*numels)
    buckets = list(bucketize(items, bucket_bytes))
    assert [t for b in buckets for t in b] == items  # every tensor once, in order
    want = bucketize_loop([4 * n for n in numels], bucket_bytes)
    assert [[items.index(x) for x in b] for b in buckets] == want
    for b in buckets:
        assert len(b) == 1 or nbytes(b) <= bucket_bytes  # only a lone tensor may overflow


def test_inline_update_round_trips_and_counts():
    items = named(3, 1, 4, 1, 5)
    # Bytes 12, 4, 16, 4, 20 into 16-byte buckets: a+b = 16 fits; c = 16 alone;
    # d = 4, +e = 24 > 16 -> [d]; e = 20 alone (over the size, its own bucket).
    update = publish(items, version=4, bucket_bytes=16, use_ray=False)
    assert update.version == 4 and update.transport == "inline" and update.num_tensors == 5
    assert [[n for n, _ in b] for b in update.buckets] == [["a", "b"], ["c"], ["d"], ["e"]]
    got = list(iter_update(update))
    assert [n for n, _ in got] == [n for n, _ in items]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(got, items))
    lost = WeightUpdate(version=4, buckets=update.buckets[:-1], num_tensors=5,
                        transport="inline")
    with pytest.raises(ValueError, match="carried 4 tensors but announced 5"):
        list(iter_update(lost))
    with pytest.raises(RegistryError, match="inline, nccl, ray"):
        WeightUpdate(version=1, buckets=(), num_tensors=0, transport="smoke-signals")
    with pytest.raises(ValueError, match="version"):
        WeightUpdate(version=-1, buckets=(), num_tensors=0, transport="inline")


def test_every_sync_is_verified_tensor_by_tensor():
    """rollout.verify_sync (workers/fingerprint.py): what arrives is what was sent."""
    items = named(3, 1, 4, 1, 5)
    update = publish(items, version=4, bucket_bytes=16, use_ray=False)
    assert set(update.fingerprint) == {"a", "b", "c", "d", "e"}
    assert len(list(iter_update(update))) == 5  # intact: passes
    corrupt = dataclasses.replace(update, buckets=tuple(
        [(n, t.clone()) for n, t in b] for b in update.buckets))
    corrupt.buckets[1][0][1][2] += 1e-3  # one element of "c", in transit
    with pytest.raises(ValueError, match="version 4: tensor 'c' arrived different"):
        list(iter_update(corrupt))
    # After the bad bucket nothing is handed on, yet every bucket is still received.
    received, handed = [], []
    with pytest.raises(ValueError, match="'c' arrived different"):
        for bucket in verified((received.append(b) or b for b in corrupt.buckets),
                               update.fingerprint, 4):
            handed.append(bucket)
    assert (len(handed), len(received)) == (1, 4)
    # A sender that skips a tensor and counts what it sent: the count agrees, the names not.
    skipped = dataclasses.replace(update, buckets=update.buckets[:-1], num_tensors=4)
    with pytest.raises(ValueError, match="1 tensor.* never arrived .*e"):
        list(iter_update(skipped))
    extra = dataclasses.replace(update, buckets=(*update.buckets, [("z", torch.ones(1))]),
                                num_tensors=6)
    with pytest.raises(ValueError, match="'z' arrived but the learner did not send it"):
        list(iter_update(extra))
    # A worker that reports another version than the one pushed stops the run.
    with pytest.raises(RuntimeError, match=r"rollout workers \[1\] report policy versions \[3\]"):
        WeightPush._adopted(4, [4, 3])
    # Off (rollout.verify_sync=false): no fingerprints travel, nothing is checked.
    unchecked = publish(items, version=4, bucket_bytes=16, use_ray=False, verify=False)
    assert unchecked.fingerprint is None


def other_model(tok, seed):
    """The tiny architecture with different weights (as after training)."""
    cfg = tiny_model_config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return load_tokenizer(tiny_model_path)


def make_batch(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tuple(tok(text, add_special_tokens=False)["input_ids"])
    return PromptBatch.plain([Prompt("q", text, ids)], n=2)


@pytest.fixture(scope="module")
def batch(tok):
    return make_batch(tok)


def reference_logprobs(model, prompt_ids, response_ids):
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])  # [1, P+T]
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].log_softmax(-1)  # [P+T, V]
    p = len(prompt_ids)
    return [logp[p + t - 1, x].item() for t, x in enumerate(response_ids)]


def check_worker_follows(worker, model, batch, version):
    out = worker.generate(batch, SamplingParams(max_new_tokens=6, seed=0))
    assert out.policy_version == version == worker.policy_version()
    for b in range(len(out)):
        want = reference_logprobs(model, out.prompt_ids[b], out.response_ids[b])
        assert out.rollout_logprobs[b] == pytest.approx(want, abs=1e-4)


def test_worker_takes_another_models_weights_inline(tiny_model_path, tok, batch):
    worker = RolloutWorker("hf", model_path=tiny_model_path)
    before = worker.generate(batch, SamplingParams(temperature=0, max_new_tokens=6))
    trained = other_model(tok, seed=99)
    update = publish(trained.state_dict().items(), version=1, bucket_bytes=1 << 20,
                     use_ray=False)
    assert len(update.buckets) > 1  # the 12.6 MB embedding alone exceeds 1 MB
    assert worker.load_weights(update) == 1
    check_worker_follows(worker, trained, batch, version=1)
    after = worker.generate(batch, SamplingParams(temperature=0, max_new_tokens=6))
    assert after.response_ids != before.response_ids  # the weights really changed


def test_load_weights_rejects_bad_updates(tiny_model_path, tok):
    engine = HFEngine(tiny_model_path)
    state = other_model(tok, seed=5).state_dict()
    with pytest.raises(KeyError, match="'model.nope' does not exist"):
        engine.load_weights([("model.nope", torch.zeros(1))])
    with pytest.raises(ValueError, match=r"shape \(3,\) does not match"):
        engine.load_weights([("model.norm.weight", torch.zeros(3))])
    partial = [(n, t) for n, t in state.items() if "layers.1." not in n]
    with pytest.raises(ValueError, match="left 9 tensors .* unset"):  # layer 1: 9 tensors
        engine.load_weights(partial)
    # Tied head: sending only the embedding (as save_pretrained does) covers lm_head.
    engine.load_weights([(n, t) for n, t in state.items() if n != "lm_head.weight"])


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def test_ray_object_store_round_trip(local_ray, tiny_model_path, tok, batch):
    trained = other_model(tok, seed=7)
    update = publish(trained.state_dict().items(), version=2, bucket_bytes=4 << 20,
                     use_ray=True)
    assert update.transport == "ray"
    assert all(isinstance(b, local_ray.ObjectRef) for b in update.buckets)
    state = trained.state_dict()
    got = list(iter_update(update))
    assert [n for n, _ in got] == list(state)
    assert all(torch.equal(t, state[n]) for n, t in got)
    worker = RolloutWorker("hf", model_path=tiny_model_path)
    assert worker.load_weights(update) == 2
    check_worker_follows(worker, trained, batch, version=2)


def test_sync_ranks_by_hand():
    # Learner rank 0; engines of 2, 2 and 1 workers take ranks 1-2, 3-4, 5.
    assert sync_ranks([2, 2, 1]) == (6, [1, 3, 5])
    assert sync_ranks([1]) == (2, [1])
    assert sync_ranks([]) == (1, [])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_broadcast_sender_stages_metadata_in_bucket_order():
    group = GROUPS.get("gloo")("127.0.0.1", free_port(), 0, 1)  # a world of one: no peers
    sender = BroadcastSender(group)
    with pytest.raises(RuntimeError, match="before stage"):
        sender.send()
    items = named(3, 1, 4) + [("h", torch.ones(2, 3, dtype=torch.bfloat16).t())]
    # Bytes 12, 4, 16, 12 into 16-byte buckets: [a, b], [c], [h] (as bucketize).
    update = sender.stage(items, version=7, bucket_bytes=16)
    assert update.transport == "nccl" and update.version == 7 and update.num_tensors == 4
    assert update.buckets == ([("a", [3], "float32"), ("b", [1], "float32")],
                              [("c", [4], "float32")], [("h", [3, 2], "bfloat16")])
    assert sender.send() == 4
    with pytest.raises(RuntimeError, match="before stage"):
        sender.send()  # the staged tensors went with the first send
    with pytest.raises(RuntimeError, match="no sync group"):
        list(iter_update(update))
    # In the engines' dtype: floating tensors are cast (halving what travels), others kept.
    cast = sender.stage(items + [("ids", torch.arange(3))], version=8, bucket_bytes=16,
                        dtype="bfloat16")
    assert [m[2] for b in cast.buckets for m in b] == ["bfloat16"] * 4 + ["int64"]
    assert [len(b) for b in cast.buckets] == [3, 1, 1]  # 6 + 2 + 8 bytes, 12, 24
    assert sender.send() == 5
    with pytest.raises(ValueError, match="rank 0"):
        BroadcastSender(types.SimpleNamespace(rank=1, device=torch.device("cpu")))
    group.close()


def _broadcast_pair(rank, port, model_path, queue):
    """Rank 0 plays learner rank 0, rank 1 a rollout worker (transformers
    engine): the send/receive code of the GPU path, over gloo."""
    torch.set_num_threads(1)
    tok = load_tokenizer(model_path)
    trained = other_model(tok, seed=99)
    state = list(trained.state_dict().items())
    if rank == 0:
        # A receiver that fails must still drain the broadcasts, or this send
        # would wait out the group's timeout (30 s) and raise.
        sender = BroadcastSender(GROUPS.get("gloo")("127.0.0.1", port, 0, 2, timeout_s=30))
        bad = [("model.nope", torch.zeros(2))] + state
        queue.put(sender.stage(bad, version=1, bucket_bytes=1 << 20))
        assert sender.send() == len(bad)
        update = sender.stage(state, version=2, bucket_bytes=1 << 20)
        assert len(update.buckets) > 1  # the 12.6 MB embedding alone exceeds 1 MB
        queue.put(update)
        assert sender.send() == len(state)
        return
    worker = RolloutWorker("hf", model_path=model_path)
    worker.init_sync_group("127.0.0.1", port, 1, 2, backend="gloo")
    with pytest.raises(KeyError, match="model.nope"):
        worker.load_weights(queue.get())
    assert worker.policy_version() == 0  # a failed update does not adopt its version
    assert worker.load_weights(queue.get()) == 2
    check_worker_follows(worker, trained, make_batch(tok), version=2)


def test_broadcast_over_gloo_into_a_rollout_worker(tiny_model_path):
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_broadcast_pair, args=(free_port(), tiny_model_path, queue), nprocs=2)


def _hung_member(port, ready, joined):
    """Joins the group as rank 1, then stops: alive, its sockets open, never receiving
    (a rollout worker stuck mid-push; a dead one's closed sockets fail at once)."""
    ready.set()  # imports done: it joins within moments of rank 0
    GROUPS.get("gloo")("127.0.0.1", port, 1, 2, timeout_s=60)
    joined.set()
    os.kill(os.getpid(), signal.SIGSTOP)


def test_a_push_to_a_hung_member_fails_within_the_sync_timeout(tiny_model_path):
    """rollout.sync_timeout_s bounds learner rank 0's broadcast (it waited 600 s before)."""
    from rlft.workers.learner import Learner, LearnerParams

    ctx, port = mp.get_context("spawn"), free_port()
    ready, joined = ctx.Event(), ctx.Event()
    member = ctx.Process(target=_hung_member, args=(port, ready, joined), daemon=True)
    member.start()
    learner = Learner(tiny_model_path, LearnerParams())
    try:
        assert ready.wait(120)
        learner.init_sync_group("127.0.0.1", port, 2, "gloo", timeout_s=3.0)
        assert joined.wait(60)
        learner.stage_weights(version=1, bucket_bytes=64 << 20)  # more than a socket buffers
        start = time.monotonic()
        with pytest.raises(RuntimeError):
            learner.send_weights()
        assert time.monotonic() - start < 3.0 + 15.0
    finally:
        member.kill()
        member.join()
        learner.shutdown()
