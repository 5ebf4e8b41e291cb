"""The turn loop: token continuity against the chat template (SmolLM2's and a
Qwen-style one with native tools), masks, limits, on a scripted engine and on
the tiny model with the transformers engine."""

import copy
import json
import re

import pytest
import torch

from rlft.data.prompts import encode_prompt_text, render_prompt
from rlft.models import load_tokenizer
from rlft.types import Prompt, PromptBatch, Rollouts
from rlft.workers.rollout import HFEngine, SamplingParams
from rlft.workers.tools import ToolRunner
from rlft.workers.turns import ChatGlue, TurnLimits, run_turns

PARAMS = SamplingParams(temperature=1.0, max_new_tokens=128, seed=1)
QWEN_STYLE = (
    "{%- if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function.name }}"
    "{% endfor %}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}"
    "\n<tool_response>\n{{ m.content }}\n</tool_response>"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class ScriptedEngine:
    """A deterministic engine with the `RolloutEngine` verbs: `reply(context, sample)`
    writes each turn's text, which is tokenized and ended with EOS."""

    def __init__(self, tok, reply):
        self.tok, self.reply, self.policy_version, self.calls = tok, reply, 0, 0

    def set_version(self, version):
        self.policy_version = version

    def load_weights(self, weights):
        pass

    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        self.calls += 1
        req = [i for i in range(len(batch.prompts)) for _ in range(batch.n)]
        resp, finish = [], []
        for b, i in enumerate(req):
            context = self.tok.decode(batch.prompts[i].prompt_ids, skip_special_tokens=False)
            ids = self.tok.encode(self.reply(context, b % batch.n), add_special_tokens=False)
            ids.append(self.tok.eos_token_id)
            finish.append("stop" if len(ids) <= params.max_new_tokens else "length")
            resp.append(tuple(ids[:params.max_new_tokens]))
        return Rollouts(
            prompt_index=tuple(req), prompts=batch.prompts,
            prompt_ids=tuple(batch.prompts[i].prompt_ids for i in req), response_ids=tuple(resp),
            response_text=tuple(self.tok.decode(r, skip_special_tokens=True) for r in resp),
            rollout_logprobs=tuple(tuple(-0.5 - 0.01 * k for k in range(len(r))) for r in resp),
            prefix_len=tuple(0 for _ in req), finish_reason=tuple(finish),
            group_id=tuple(batch.group_id[i] for i in req), policy_version=self.policy_version)


def calculator_script(context: str, sample: int) -> str:
    """Sample 0 calls the calculator and then answers with its result; sample 1 answers at
    once; sample 2 writes an unreadable call, then gives up; sample 3 makes two calls.
    (A later turn is one request of n=1: the context, not `sample`, says whose it is.)"""
    results = re.findall(r"(?:<\|im_start\|>tool\n|<tool_response>\n)(.*?)"
                         r"(?:<\|im_end\|>|\n</tool_response>)", context)
    call = '<tool_call>{{"name": "calculator", "arguments": {{"expression": "{}"}}}}</tool_call>'
    if "calculator(123456" in context:
        return "No idea."
    if results:
        return f"The answer is {results[-1]}."
    if sample == 1:
        return "I think it is 7."
    if sample == 2:
        return "<tool_call>calculator(123456 * 654321)</tool_call>"
    if sample == 3:
        return call.format("123456 * 654321") + "\n" + call.format("2 + 2")
    return call.format("123456 * 654321")


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return load_tokenizer(tiny_model_path)


@pytest.fixture(scope="module")
def qwen_tok(tok):
    out = copy.deepcopy(tok)
    out.chat_template = QWEN_STYLE
    return out


@pytest.fixture(scope="module")
def tools():
    with ToolRunner(["calculator"], num_workers=0) as runner:
        yield runner


def prompt_batch(tok, tools, n):
    messages = [{"role": "user", "content": "What is 123456 * 654321?"}]
    text = render_prompt(messages, tok, tools.schemas)
    prompt = Prompt("q0", text, tuple(encode_prompt_text(tok, text)), {"messages": messages})
    return PromptBatch.plain([prompt], n=n), messages


def rendered_ids(tok, tools, messages, traj):
    """The final conversation rendered by the template, tokenized in one piece."""
    convo = list(messages)
    for m in traj.messages:
        convo.append({"role": m["role"], "content": m["content"]})
    kwargs = {"tools": tools.schemas} if "tools" in tok.chat_template else {}
    text = tok.apply_chat_template(convo, tokenize=False, **kwargs)
    return encode_prompt_text(tok, text)


@pytest.mark.parametrize("which", ["smollm2", "qwen_style"])
def test_tokens_continue_exactly_as_the_template_renders(which, tok, qwen_tok, tools):
    tok = tok if which == "smollm2" else qwen_tok
    batch, messages = prompt_batch(tok, tools, n=4)
    engine = ScriptedEngine(tok, calculator_script)
    trajs = run_turns(engine, tok, batch, PARAMS, tools, ChatGlue(tok, tools.schemas),
                      TurnLimits(max_turns=4, max_total_tokens=400))
    assert engine.calls == 2  # every unfinished sample generates together, one call per turn
    product = str(123456 * 654321)
    assert [(t.turns, t.tool_calls, t.tool_errors, t.finish_reason) for t in trajs] == [
        (2, 1, 0, "stop"), (1, 0, 0, "stop"), (2, 0, 1, "stop"), (2, 2, 0, "stop")]
    assert trajs[0].answer == f"The answer is {product}."
    assert [m["content"] for m in trajs[3].messages if m["role"] == "tool"] == [product, "4"]
    assert trajs[2].messages[1]["content"].startswith("Error: could not read this tool call")
    for t in trajs:
        full = list(t.prompt_ids) + t.ids
        want = rendered_ids(tok, tools, messages, t)
        assert want[:len(full)] == full  # not one token dropped, added or re-tokenized
        assert tok.decode(want[len(full):]).strip() == ""  # only the template's closing newline
        # The mask covers exactly the scripted turns; log-probs exist for every model token.
        model = [tok.decode([i for i, m in zip(t.ids, t.model_mask) if m])]
        said = "".join(m["content"] + "<|im_end|>" for m in t.messages if m["role"] == "assistant")
        assert model == [said]
        assert all((lp != 0.0) == m for lp, m in zip(t.logprobs, t.model_mask))
        assert len(t.logprobs) == len(t.ids) == len(t.model_mask)


def test_turn_and_token_limits(tok, tools):
    def always_call(context, sample):
        return '<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 1"}}</tool_call>'

    batch, _ = prompt_batch(tok, tools, n=1)
    engine = ScriptedEngine(tok, always_call)
    glue = ChatGlue(tok, tools.schemas)
    t, = run_turns(engine, tok, batch, PARAMS, tools, glue, TurnLimits(3, 1000))
    assert (t.turns, t.tool_calls, t.finish_reason) == (3, 2, "stop")  # the 3rd turn's call: not run
    one_turn = len(tok.encode(always_call("", 0), add_special_tokens=False)) + 1
    t, = run_turns(engine, tok, batch, PARAMS, tools, glue, TurnLimits(10, 3 * one_turn))
    assert t.finish_reason == "length" and len(t.ids) <= 3 * one_turn and t.turns >= 2
    with pytest.raises(ValueError, match="max_turns"):
        TurnLimits(0, 10)


def test_hf_engine_turns_on_the_tiny_model(tiny_model_path, tok, tools):
    """A forced first call (prefix), then the random model's own turn after the tool result:
    the engine's log-probs of that turn equal a forward pass over the whole trajectory."""
    engine = HFEngine(tiny_model_path, seed=0)
    batch, _ = prompt_batch(tok, tools, n=2)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6 * 7"}}</tool_call>'
    forced = tuple(tok.encode(call, add_special_tokens=False))
    batch = PromptBatch(batch.prompts, (forced,), batch.group_id, batch.n)
    # Common letters as stop strings: the random model's first turn ends with a stop, not
    # at its length cap (which would end the trajectory).
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=3, stop=("e", "a", "o", " "))
    trajs = run_turns(engine, tok, batch, params, tools, ChatGlue(tok, tools.schemas),
                      TurnLimits(max_turns=2, max_total_tokens=200))
    for t in trajs:
        assert t.turns == 2 and t.tool_calls == 1 and t.messages[1]["content"] == "42"
        ids = torch.tensor([list(t.prompt_ids) + t.ids])  # [1, P+T]
        with torch.no_grad():
            logp = engine.model(input_ids=ids).logits[0].float().log_softmax(-1)  # [P+T, V]
        P = len(t.prompt_ids)
        mask = torch.tensor(t.model_mask)
        ref = logp[P - 1:-1].gather(1, ids[0, P:, None])[:, 0]  # [T]
        second = mask.clone()
        second[:t.model_mask.index(False)] = False  # the second model turn, after the tool
        assert second.any()
        assert torch.allclose(ref[second], torch.tensor(t.logprobs)[second], atol=1e-4)
        glue = tok.decode([i for i, m in zip(t.ids, t.model_mask) if not m])
        assert "<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n" in glue
    assert json.loads(json.dumps(trajs[0].messages))  # the conversation is plain JSON


REWARD = '''
def tool_results(completion, *, conversation=(), **_):
    return float(sum(m["role"] == "tool" and m["content"] == "42" for m in conversation))
'''


def test_worker_to_rewards_to_batch(tiny_model_path, tok, tools, tmp_path):
    """RolloutWorker with rollout.tools -> Rollouts whose rewards see the conversation and
    whose collated loss mask is the model's tokens only."""
    from rlft.batch.collate import collate
    from rlft.batch.groups import take
    from rlft.rewards.base import RewardTerm
    from rlft.workers.reward import RewardService
    from rlft.workers.rollout import RolloutWorker
    from rlft.workers.tools import ToolSettings
    from rlft.workers.turns import tool_metrics

    worker = RolloutWorker("hf", tiny_model_path, seed=0,
                           tools=ToolSettings(("calculator",), max_turns=2, max_total_tokens=120))
    batch, _ = prompt_batch(tok, tools, n=2)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6 * 7"}}</tool_call>'
    batch = PromptBatch(batch.prompts, (tuple(tok.encode(call, add_special_tokens=False)),),
                        batch.group_id, batch.n)
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=3, stop=("e", "a", "o", " "))
    ro = worker.generate(batch, params)
    worker._turns.runner.close()
    assert len(ro.model_mask) == 2 and not all(ro.model_mask[0])
    (tmp_path / "r.py").write_text(REWARD)
    with RewardService([RewardTerm(f"{tmp_path / 'r.py'}:tool_results")], num_workers=0) as rs:
        scored = rs.score(ro)
    assert scored.rewards.tolist() == [1.0, 1.0]
    metrics = tool_metrics(ro)
    assert metrics["rollout/turns_mean"] == 2.0 and metrics["rollout/tool_calls_mean"] == 1.0
    assert metrics["rollout/tool_errors"] == 0.0 and metrics["time/tools"] > 0
    batch_t, token_rewards = collate(take(scored, torch.tensor([False, True])), tok.pad_token_id)
    P = len(ro.prompt_ids[1])
    got = batch_t.response_mask[0, P:P + len(ro.response_ids[1])].tolist()
    assert got == list(ro.model_mask[1])
    assert token_rewards[0].nonzero().flatten().tolist() == [P + len(ro.response_ids[1]) - 1]


# -- multi-turn demonstrations (CHORD's expert rows, SFT, Prefix-RFT) ----------------

# The glue as each template writes it (HF renders with trim_blocks: no newline after a tag).
GLUE = {"smollm2": "\n<|im_start|>tool\n{}<|im_end|>\n<|im_start|>assistant\n",
        "qwen_style": "\n<|im_start|>user<tool_response>\n{}\n</tool_response><|im_end|>\n"
                      "<|im_start|>assistant\n"}


@pytest.mark.parametrize("which", ["smollm2", "qwen_style"])
def test_demonstration_turns_tokens_and_mask(which, tok, qwen_tok):
    """A `builtin:tool_use` row's demonstration: tokens equal the template's rendering of
    the whole conversation, the masked tokens are exactly the tool message and glue, and
    every path that trains on it (CHORD/SFT rows via demonstration_rollouts + collate,
    `rlft sft`'s batch, Prefix-RFT's prefix) keeps the mask."""
    from rlft.batch.collate import collate, demonstration_rollouts
    from rlft.commands.sft import demonstration_batch
    from rlft.data.demonstrations import demonstration_ids, demonstration_tokens
    from rlft.data.tasks.tool_use import tool_use
    from rlft.types import ScoredRollouts

    tok = tok if which == "smollm2" else qwen_tok
    row = tool_use("eval")[0]
    turns = json.loads(row["demonstration_turns"])
    messages = list(row["prompt"])
    text = render_prompt(messages, tok, row["tools"])
    prompt = Prompt("r0", text, tuple(encode_prompt_text(tok, text)),
                    {k: row[k] for k in ("answer", "tools", "demonstration",
                                         "demonstration_turns")})
    demo = demonstration_tokens(prompt, tok)
    full = list(prompt.prompt_ids) + list(demo.ids)
    kwargs = {"tools": row["tools"]} if "tools" in tok.chat_template else {}
    want = encode_prompt_text(tok, tok.apply_chat_template(
        messages + [{k: m[k] for k in ("role", "content")} for m in turns], tokenize=False,
        **kwargs))
    assert want[:len(full)] == full and tok.decode(want[len(full):]).strip() == ""
    assert len(demo.model_mask) == len(demo.ids) and demo.ids[-1] == tok.eos_token_id
    masked = [i for i, m in zip(demo.ids, demo.model_mask) if not m]
    assert tok.decode(masked) == GLUE[which].format(row["answer"])
    model = [i for i, m in zip(demo.ids, demo.model_mask) if m]
    assert tok.decode(model) == f"{turns[0]['content']}<|im_end|>{row['answer']}<|im_end|>"
    first_false = demo.model_mask.index(False)
    assert all(demo.model_mask[:first_false]) and all(demo.model_mask[first_false + len(masked):])
    assert tok.decode(demo.prefix) == turns[0]["content"]  # Prefix-RFT: the call, no EOS

    # Rows without demonstration_turns: as before, no mask.
    single = Prompt("r1", text, prompt.prompt_ids, {"demonstration": "42"})
    assert demonstration_tokens(single, tok).ids == demonstration_ids(single, tok)
    assert demonstration_tokens(single, tok).model_mask == ()

    ro = demonstration_rollouts([prompt, single], [demo.ids, demonstration_ids(single, tok)],
                                ["", "42"], [demo.model_mask, ()])
    batch, _ = collate(ScoredRollouts(ro, torch.zeros(2), {}), tok.pad_token_id)
    P = len(prompt.prompt_ids)
    assert batch.response_mask[0, P:P + len(demo.ids)].tolist() == list(demo.model_mask)
    assert batch.response_mask[0].sum() == sum(demo.model_mask)
    assert batch.response_mask[1].sum() == len(demonstration_ids(single, tok))
    assert demonstration_rollouts([single], [(1, 2)], ["x"], [()]).model_mask == ()
    sft = demonstration_batch([prompt], tok, tok.pad_token_id)
    assert torch.equal(sft.response_mask[0], batch.response_mask[0, :sft.input_ids.shape[1]])


def test_bad_demonstration_turns_name_the_row(tok):
    from rlft.data.demonstrations import demonstration_tokens

    for bad in ("not json", "[]", json.dumps([{"role": "tool", "content": "1"}]),
                json.dumps([{"role": "assistant", "content": "a"}] * 2)):
        p = Prompt("row-7", "q", (1,), {"demonstration_turns": bad})
        with pytest.raises(ValueError, match="row-7.*demonstration_turns"):
            demonstration_tokens(p, tok)
