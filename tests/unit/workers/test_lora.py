"""LoRA in the learner (peft), on the tiny random Llama in a world of one (gloo, CPU).

Real learners, real peft, a real HFEngine receiving the synced weights; nothing mocked.
"""

from __future__ import annotations

import contextlib
import os
import time

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from peft import PeftModel
from test_learner import make_batch, naive_logprobs
from tolerances import fp32_bound
from transformers import AutoModelForCausalLM

from rlft.config import ConfigError, load_config
from rlft.learner import lora
from rlft.run.wiring import learner_params
from rlft.types import Prompt, PromptBatch, TrainBatch
from rlft.workers.learner import Learner, LearnerParams, LoraParams, LossTermSpec
from rlft.workers.rollout import HFEngine, SamplingParams
from rlft.workers.weight_sync import iter_update, publish

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SFT = [LossTermSpec("sft_ce", 1.0)]


@contextlib.contextmanager
def lora_learner(model, r=4, alpha=8.0, dropout=0.0, **kw):
    ref = kw.pop("ref_model", None)
    params = LearnerParams(**{"lr": 1e-2, "max_grad_norm": 0.0, **kw},
                           lora=LoraParams(r=r, alpha=alpha, dropout=dropout))
    lrn = Learner(model, params, ref_model=ref)
    try:
        yield lrn
    finally:
        lrn.shutdown()


def raw(lrn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in lrn._raw_weights()}


def merged(lrn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in lrn.named_weights()}


# -- plain pieces ---------------------------------------------------------------

def test_params_and_config():
    with pytest.raises(ValueError, match="model.lora.r"):
        LoraParams(r=-1)
    with pytest.raises(ValueError, match="target_modules"):
        LoraParams(r=2, target_modules=("",))
    assert LoraParams().tag() == "full" and not LoraParams().enabled
    assert LoraParams(r=8, alpha=16).tag() == "lora r=8 alpha=16 targets=all-linear"
    cfg = load_config(None, ["model.lora.r=8", "model.lora.alpha=32", "model.lora.dropout=0.05",
                             "model.lora.target_modules=[q_proj, v_proj]"])
    assert learner_params(cfg).lora == LoraParams(r=8, alpha=32.0, dropout=0.05,
                                                  target_modules=("q_proj", "v_proj"))
    assert learner_params(load_config()).lora == LoraParams()  # off by default
    assert load_config(None, ["model.lora.export=adapter"]).model.lora.export == "adapter"
    with pytest.raises(ConfigError, match="model.lora.export"):
        load_config(None, ["model.lora.export=both"])


def test_merge_hand_worked():
    # W = I (2x2), A = [[1, 1]] (r=1, in=2), B = [[2], [0]] (out=2), scaling 0.5:
    # B @ A = [[2, 2], [0, 0]] -> W' = I + 0.5 * that = [[2, 1], [0, 1]]. The bias keeps
    # its value under the base name; the adapter tensors are dropped.
    state = [("base_model.model.fc.base_layer.weight", torch.eye(2)),
             ("base_model.model.fc.base_layer.bias", torch.tensor([3.0, 4.0])),
             ("base_model.model.fc.lora_A.default.weight", torch.tensor([[1.0, 1.0]])),
             ("base_model.model.fc.lora_B.default.weight", torch.tensor([[2.0], [0.0]])),
             ("base_model.model.other.weight", torch.ones(1))]
    out = dict(lora.merged(state, {"fc": (0.5, False)}))
    assert list(out) == ["fc.weight", "fc.bias", "other.weight"]
    assert out["fc.weight"].tolist() == [[2.0, 1.0], [0.0, 1.0]]
    assert out["fc.bias"].tolist() == [3.0, 4.0]
    # Fan-in-fan-out layers (GPT-2 Conv1D) store W transposed, so the delta is too.
    assert dict(lora.merged(state, {"fc": (0.5, True)}))["fc.weight"].tolist() == \
        [[2.0, 0.0], [1.0, 1.0]]
    with pytest.raises(KeyError, match="lora_A/lora_B"):
        lora.merged(state[:3], {"fc": (0.5, False)})


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # lm_head target
def test_merge_matches_peft_merge_and_unload(tiny_model_path):
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    peft_model = lora.wrap(lm, LoraParams(r=4, alpha=8, target_modules=("q_proj", "down_proj")))
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: make the delta non-zero
                p.normal_(0, 0.1)
    specs = lora.merge_specs(lm)
    assert specs and all(s == (2.0, False) for s in specs.values())  # alpha / r = 8 / 4
    got = lora.merged(lm.state_dict().items(), specs)
    want = peft_model.merge_and_unload().state_dict()
    assert [n for n, _ in got] == list(want)
    for name, tensor in got:
        torch.testing.assert_close(tensor, want[name], atol=1e-6, rtol=0, msg=name)
    for targets in (("no_such_proj",), ("q_proj", "lm_head"), ("embed_tokens",)):
        with pytest.raises(ValueError, match="model.lora.target_modules"):
            lora.wrap(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                      LoraParams(r=2, target_modules=targets))


# -- the learner ----------------------------------------------------------------

def test_optimizer_holds_only_adapters(tiny_model_path):
    layers = AutoModelForCausalLM.from_pretrained(tiny_model_path).config.num_hidden_layers
    with lora_learner(tiny_model_path) as lrn:
        names = {id(p): n for n, p in lrn.policy.named_parameters()}
        opt_names = [names[id(p)] for g in lrn.opt.param_groups for p in g["params"]]
        # Every linear projection of every decoder layer gets one A and one B; nothing else.
        assert len(opt_names) == 2 * len(PROJ) * layers
        assert all(".lora_A.default." in n or ".lora_B.default." in n for n in opt_names)
        assert {n.split(".")[-4] for n in opt_names} == set(PROJ)
        before = raw(lrn)
        assert not any(before[n].any() for n in before if "lora_B" in n)  # peft's init
        # B = 0 gives A a zero gradient on the first step; the second moves both.
        stats = [lrn.update(make_batch(seed=s), SFT) for s in range(2)]
        assert not any(s.skipped for s in stats) and stats[0].grad_norm > 0
        after = raw(lrn)
    for name in before:
        if lora.is_adapter(name):
            assert not torch.equal(after[name], before[name]), f"{name} did not train"
        else:
            assert torch.equal(after[name], before[name]), f"base weight {name} changed"


def test_reference_is_the_base_with_adapters_off(tiny_model_path):
    batch = make_batch()
    resp = batch.response_mask
    base_lp, _ = naive_logprobs(tiny_model_path, batch)
    with lora_learner(tiny_model_path, ref_model=tiny_model_path) as lrn:
        assert lrn.ref is None  # no second copy of the model
        lrn.update(batch, SFT)
        lrn.update(batch, SFT)
        ref_lp, _ = lrn.compute_logprobs(batch, ref=True)
        lp, _ = lrn.compute_logprobs(batch)
        assert all(p.requires_grad for p in lrn.trainable)  # the adapters are back on
    # float32 learner against the float64 reference, within float32 rounding.
    torch.testing.assert_close(ref_lp[resp].double(), base_lp[resp], rtol=0,
                               atol=fp32_bound(base_lp[resp]))
    assert (lp[resp] - base_lp[resp]).abs().max() > 1e-2  # the policy itself moved


def _greedy(engine: HFEngine, prompt_ids: tuple[int, ...]):
    out = engine.generate(PromptBatch.plain([Prompt("p", "", prompt_ids)], n=1),
                          SamplingParams(temperature=0.0, max_new_tokens=8))
    return out.response_ids[0], torch.tensor(out.rollout_logprobs[0])


def test_synced_engine_scores_like_the_policy(tiny_model_path):
    """After an update the engine, given the merged weights, is the learner's policy."""
    prompt = (1, 17, 402, 9, 311)
    engine = HFEngine(tiny_model_path, seed=0)
    with lora_learner(tiny_model_path, lr=3e-2) as lrn:
        for _ in range(3):
            lrn.update(make_batch(), SFT)
        named = list(lrn.named_weights())
        assert [n for n, _ in named] == list(engine.model.state_dict())  # base names, all
        stale_resp, stale_lp = _greedy(engine, prompt)
        engine.load_weights(iter_update(publish(named, 3, use_ray=False)))
        resp, engine_lp = _greedy(engine, prompt)
        ids = torch.tensor([list(prompt) + list(resp)])  # [1, L]
        am = torch.ones_like(ids, dtype=torch.bool)
        rm = am.clone()
        rm[:, :len(prompt)] = False
        batch = TrainBatch(ids, am, rm, torch.zeros(ids.shape), torch.zeros(1), 3)
        learner_lp, _ = lrn.compute_logprobs(batch)
    # Two float32 paths (cached decoding, the learner's forward): fp32_bound.
    want = learner_lp[0, len(prompt):]
    torch.testing.assert_close(engine_lp, want, atol=fp32_bound(want), rtol=0)
    if stale_resp == resp:  # the stale engine must not pass the same check
        assert (stale_lp - engine_lp).abs().max() > 1e-3


def _ckpt_keys(path) -> list[str]:
    return list(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def test_save_load_continues_bit_identically(tiny_model_path, tmp_path):
    batches = [make_batch(seed=s) for s in range(4)]
    terms = [LossTermSpec("ppo_clip", 1.0), LossTermSpec("sft_ce", 0.3)]
    # Dropout draws random numbers in every update: the checkpointed RNG must carry them.
    kw = dict(dropout=0.1, lr=1e-2, warmup_steps=1, total_steps=4, lr_schedule="cosine",
              max_grad_norm=0.5, weight_decay=0.1)
    with lora_learner(tiny_model_path, **kw) as lrn:
        [lrn.update(b, terms) for b in batches[:2]]
        lrn.save(str(tmp_path / "ckpt"))
        tail = [lrn.update(b, terms) for b in batches[2:]]
        want, want_raw = merged(lrn), raw(lrn)
    keys = _ckpt_keys(tmp_path / "ckpt")
    model_keys = [k for k in keys if k.startswith("model/")]
    assert model_keys and all(lora.is_adapter(k) for k in model_keys)  # no base weights
    assert any(k.startswith("optim/") and k.endswith("/exp_avg") for k in keys)
    with lora_learner(tiny_model_path, **kw) as lrn:
        lrn.load(str(tmp_path / "ckpt"))
        assert lrn.steps == 2
        resumed = [lrn.update(b, terms) for b in batches[2:]]
        got, got_raw = merged(lrn), raw(lrn)
    assert [s.loss for s in resumed] == [s.loss for s in tail]
    assert got_raw.keys() == want_raw.keys() and got.keys() == want.keys()
    for name in want_raw:
        assert torch.equal(got_raw[name], want_raw[name]), name
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # A LoRA checkpoint does not load into a learner without (the same) adapters,
    # and a learner without adapters has no adapter to export.
    full = Learner(tiny_model_path, LearnerParams())
    try:
        with pytest.raises(ValueError, match="model.lora"):
            full.load(str(tmp_path / "ckpt"))
        with pytest.raises(ValueError, match="model.lora.r=0"):
            full.export_hf(str(tmp_path / "a"), merged=False)
    finally:
        full.shutdown()


def test_export_merged_and_adapter(tiny_model_path, tmp_path):
    batch = make_batch()
    with lora_learner(tiny_model_path) as lrn:
        lrn.update(batch, SFT)
        trained = merged(lrn)
        want_lp, _ = lrn.compute_logprobs(batch)
        lrn.export_hf(str(tmp_path / "merged"))  # the default, as before LoRA
        lrn.export_hf(str(tmp_path / "adapter"), merged=False)
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    resp = batch.response_mask
    # Both exports scored in float64: the learner's float32 is held to fp32_bound of it.
    for model in (plain.double().eval(), adapted.double()):
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids,
                           attention_mask=batch.attention_mask.long()).logits  # [B, L, V]
        lp = torch.log_softmax(logits[:, :-1], -1).gather(
            -1, batch.input_ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
        torch.testing.assert_close(want_lp[resp].double(), lp[resp[:, 1:]], rtol=0,
                                   atol=fp32_bound(lp[resp[:, 1:]]))



# -- FSDP2 with two ranks -------------------------------------------------------

# lr 1, eps 1: Adam's first step is ~ the gradient itself, so weights compare gradients.
TWO_RANKS = dict(lr=1.0, eps=1.0, micro_batch_tokens=25)


def _rank(rank: int, init: str, model_path: str, out: str) -> None:
    torch.set_num_threads(1)  # two ranks share two cores
    params = LearnerParams(max_grad_norm=0.0, **TWO_RANKS, lora=LoraParams(r=4, alpha=8.0))
    lrn = Learner(model_path, params, rank, 2, init_method=init, ref_model=model_path)
    half = make_batch().select(slice(rank, None, 2))  # the training loop's split of the rows
    ref_lp, _ = lrn.compute_logprobs(half, ref=True)
    lrn.update(half, SFT)
    lrn.save(os.path.join(out, "ckpt"))
    weights = lrn.full_state()
    torch.save({"ref": ref_lp, "weights": weights}, os.path.join(out, f"rank{rank}.pt"))
    lrn.shutdown()


def test_two_ranks_shard_the_adapters_like_one(tiny_model_path, tmp_path):
    ctx = mp.start_processes(_rank, args=(f"file://{tmp_path / 'pg'}", tiny_model_path,
                                          str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 240
    try:
        while not ctx.join(timeout=5):  # raises with a rank's traceback if it fails
            assert time.monotonic() < deadline, "two LoRA ranks hung (an unpaired collective?)"
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[1]["weights"] is None  # only rank 0 gathers
    two = ranks[0]["weights"]
    batch = make_batch()
    base_lp, _ = naive_logprobs(tiny_model_path, batch)
    for r in range(2):
        resp = batch.response_mask[r::2]
        torch.testing.assert_close(ranks[r]["ref"][resp].double(), base_lp[r::2][resp],
                                   atol=fp32_bound(base_lp[r::2][resp]), rtol=0)
    with lora_learner(tiny_model_path, **TWO_RANKS) as one:
        one.update(batch, SFT)
        whole = one.full_state()
    # FSDP sums the two ranks' gradients in another order: fp32_bound of the weights.
    for name, tensor in whole.items():
        torch.testing.assert_close(two[name], tensor, atol=fp32_bound(*whole.values()), rtol=0,
                                   msg=name)
    with lora_learner(tiny_model_path, **TWO_RANKS) as resumed:  # DCP reshards 2 -> 1
        resumed.load(str(tmp_path / "ckpt"))
        assert all(torch.equal(two[n], t) for n, t in resumed.named_weights())
