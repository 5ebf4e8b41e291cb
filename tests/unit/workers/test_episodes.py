"""Episodes in a stateful environment (rollout.env): the built-in bank over two user
turns on a scripted engine (token continuity, masks, separate states per sample,
end states scored by state_match), the protocol form, and isolation (crash,
hang, memory, bad rows) in the environment processes."""

import json
import re
import time

import pytest
from test_turns import ScriptedEngine

from rlft.data.prompts import build_prompts
from rlft.data.tasks import TASKS
from rlft.envs.base import env_class, method_schemas, observation, replay
from rlft.envs.host import EnvHost, EnvSettings
from rlft.models import load_tokenizer
from rlft.rewards.state_match import state_match
from rlft.types import PromptBatch
from rlft.workers.episodes import EnvTurns, env_metrics
from rlft.workers.rollout import SamplingParams
from rlft.workers.turns import TurnLimits

PARAMS = SamplingParams(temperature=1.0, max_new_tokens=96, seed=1)
USER_ENV = '''
import os, time

class Cart:
    made = 0  # instances made in this process

    def __init__(self, owner: str = "x"):
        self.owner, self.items = owner, []
        Cart.made += 1

    def add(self, item: str) -> str:
        """Add an item to the cart."""
        if item == "hang":
            time.sleep(60)
        if item == "crash":
            os._exit(3)
        if item == "eat":
            self.blob = bytearray(1 << 31)
        if item == "boom":
            raise RuntimeError("no such item")
        self.items.append(item)
        return f"{len(self.items)} items"


class Game:
    def reset(self, row):
        self.turn = 0
        return [{"role": "user", "content": "Guess my number (1-9)."}]

    def step(self, message):
        self.turn += 1
        right = message["content"].strip() == "7"
        return ([{"role": "user", "content": "right" if right else "try again"}],
                float(right), right or self.turn >= 3)


class Untyped:
    def add(self, item):
        pass
'''


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return load_tokenizer(tiny_model_path)


@pytest.fixture(scope="module")
def user_env(tmp_path_factory):
    path = tmp_path_factory.mktemp("env") / "user_env.py"
    path.write_text(USER_ENV)
    return str(path)


def bank_script(rows):
    """Answers each user request with its reference call, then 'Done.' after the tool
    result; sample 1 of a group deposits 1 dollar too many on the first turn."""
    calls = {}
    for row in rows:
        asks = [row["prompt"][-1]["content"], *row["user_turns"]]
        calls.update({ask: turn[0] for ask, turn in zip(asks, row["reference_calls"])})

    def reply(context: str, sample: int) -> str:
        if context.rfind("<|im_start|>tool") > context.rfind("<|im_start|>user"):
            return "Done."
        ask = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", context, re.S)[-1]
        call = json.loads(json.dumps(calls[ask]))
        if sample == 1 and "amount" in call["arguments"]:
            call["arguments"]["amount"] += 1
        return f"<tool_call>{json.dumps(call)}</tool_call>"
    return reply


@pytest.mark.parametrize("loop", ["episode", "lockstep"])
def test_bank_episodes_over_two_user_turns(tok, loop):
    rows = TASKS.get("bank")("eval")[:2]
    prompts = build_prompts(
        [{k: json.dumps(v) if k in ("tools", "env_args", "reference_calls") else v
          for k, v in r.items()} for r in rows], tok).prompts
    engine = ScriptedEngine(tok, bank_script(rows))
    turns = EnvTurns(EnvSettings("bank", num_workers=2, loop=loop), TurnLimits(6, 600), tok)
    try:
        ro = turns.generate(engine, PromptBatch.plain(list(prompts), n=2), PARAMS)
    finally:
        turns.close()
    assert len(ro) == 4 and all(e.error == "" for e in ro.episodes)
    for b in range(4):
        row, talk = rows[ro.prompt_index[b]], ro.conversation[b]
        assert [m["role"] for m in talk] == ["assistant", "tool", "assistant", "user",
                                             "assistant", "tool", "assistant"]
        assert ro.episodes[b].steps == 4
        # Token in, token out: the trajectory is what the template renders, masks on glue.
        convo = [*row["prompt"], *({"role": m["role"], "content": m["content"]} for m in talk)]
        start = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(convo, tokenize=False)
        want = tok.encode(full[len(start):], add_special_tokens=False)
        assert list(ro.response_ids[b])[:len(want) - 1] == want[:-1]
        assert sum(ro.model_mask[b]) < len(ro.model_mask[b])
        score = state_match("", state=ro.episodes[b].state, env="bank",
                            reference_calls=row["reference_calls"], env_args=row["env_args"])
        wrong = b % 2 == 1 and "amount" in row["reference_calls"][0][0]["arguments"]
        # Separate instances: the sample that deposited a dollar too many changed only its own.
        assert score["exact"] == (0.0 if wrong else 1.0), (b, ro.episodes[b].state)
        assert (score["total"] < 1.0) == wrong
    assert env_metrics(ro)["env/steps_mean"] == 4.0


def test_bank_rows_are_fixed_disjoint_and_replay_to_their_answer():
    train, ev = TASKS.get("bank")("train"), TASKS.get("bank")("eval")
    assert (len(train), len(ev)) == (2000, 200) and TASKS.get("bank")("eval") == ev

    def key(row):
        return json.dumps([row["env_args"], row["reference_calls"]], sort_keys=True)
    assert not {key(r) for r in train} & {key(r) for r in ev}
    for row in ev:
        assert replay(env_class("bank"), row, row["reference_calls"]) == json.loads(row["answer"])
        said = [m for m in json.loads(row["demonstration_turns"]) if m["role"] != "tool"]
        assert [m["role"] for m in said] == ["assistant", "assistant", "user", "assistant",
                                             "assistant"]


def test_state_match_replays_a_rows_reference_once(user_env):
    """The n samples of a prompt share one replay of the reference calls."""
    env, row = f"{user_env}:Cart", {"env_args": {"owner": "ann"}}
    calls = [[{"name": "add", "arguments": {"item": "pen"}}]]
    cls, made = env_class(env), env_class(env).made
    got = [state_match("", state={"owner": "ann", "items": items}, env=env,
                       reference_calls=calls, **row) for items in (["pen"], [], ["pen"])]
    assert [g["exact"] for g in got] == [1.0, 0.0, 1.0] and 0 < got[1]["total"] < 1
    assert cls.made - made == 1


def test_protocol_form_reset_replaces_the_prompt_and_rewards_add_up(tok, user_env):
    prompts = build_prompts([{"prompt": "unused"}], tok).prompts
    guesses = iter(["3", "7"])
    engine = ScriptedEngine(tok, lambda context, sample: next(guesses))
    turns = EnvTurns(EnvSettings(f"{user_env}:Game", num_workers=1), TurnLimits(4, 400), tok)
    try:
        ro = turns.generate(engine, PromptBatch.plain(list(prompts), n=1), PARAMS)
    finally:
        turns.close()
    assert "Guess my number" in tok.decode(ro.prompt_ids[0]) and "unused" not in \
        tok.decode(ro.prompt_ids[0])
    assert ro.episodes[0].reward == 1.0 and ro.episodes[0].state == {"turn": 2}
    assert [m["content"] for m in ro.conversation[0]] == ["3", "try again", "7", "right"]


def test_failures_end_their_episode_and_are_counted(user_env):
    host = EnvHost(EnvSettings(f"{user_env}:Cart", timeout_s=1.0, memory_mb=256, num_workers=2))
    try:
        host.open([{"env_args": {"owner": o}} for o in "abcd"] + [{"env_args": 5}])

        def add(item):
            return {"role": "assistant", "content": "", "tool_calls": [
                {"name": "add", "arguments": {"item": item}}]}
        got = host.step([(0, add("apple")), (1, add("boom")), (2, add("crash")), (3, add("eat"))])
        assert got[0].messages[0]["content"] == "1 items" and not got[0].done
        assert got[1].messages[0]["content"].startswith("Error: RuntimeError") and not got[1].done
        assert got[2].done and "died" in got[2].error  # the crash; episode 0 shared its process
        assert got[3].done and "MemoryError" in got[3].error
        start = time.monotonic()
        got = host.step([(1, add("hang")), (0, add("pear"))])
        assert time.monotonic() - start < 10 and "within 1 s" in got[1].error
        assert got[0].done and got[0].error  # lost with the crashed process
        bad = host.step([(4, add("x"))])[4]
        assert bad.done and "env_args must be a JSON object" in bad.error
        assert host.errors == 5  # crash, memory, hang, and the two lost with the crash
        assert host.close([0, 1, 2, 3, 4]) == dict.fromkeys(range(5))
    finally:
        host.shutdown()
    assert all(not p.proc.is_alive() for p in host._procs)


def test_bad_classes_and_observations_name_the_fix(user_env):
    with pytest.raises(TypeError, match="has no type hint"):
        method_schemas(env_class(f"{user_env}:Untyped"))
    with pytest.raises(TypeError, match="no public methods"):
        method_schemas(type("Empty", (), {}))
    with pytest.raises(TypeError, match="Game.step returned list"):
        observation([], "Game.step", 100)
    with pytest.raises(TypeError, match="role"):
        observation(([{"role": "system", "content": "x"}], None, False), "Game.step", 100)
    assert observation((["long" * 10], None, True), "G.step", 8).messages[0]["content"] \
        .startswith("longlong...")


def test_multi_turn_demonstrations_mask_the_user_and_tool_turns(tok):
    from rlft.data.demonstrations import demonstration_tokens

    row = TASKS.get("bank")("eval")[0]
    prompt = build_prompts([{k: json.dumps(v) if k in ("tools", "env_args", "reference_calls")
                             else v for k, v in row.items()}], tok).prompts[0]
    demo = demonstration_tokens(prompt, tok)
    model = tok.decode([t for t, m in zip(demo.ids, demo.model_mask) if m])
    masked = tok.decode([t for t, m in zip(demo.ids, demo.model_mask) if not m])
    calls = [c[0]["name"] for c in row["reference_calls"]]
    assert all(f'"name": "{c}"' in model for c in calls) and model.count("Done.") == 2
    assert row["user_turns"][0] in masked and row["user_turns"][0] not in model


def test_skyrl_gym_environments_through_the_protocol_form(tok):
    """skyrl-gym's gsm8k_multi_turn: a wrong answer gets its format credit and a user
    turn asking again, the right one 1.0 and the end; the rewards add up as `env`."""
    rows = [{"prompt": "Natalia sold 48 clips in April and half as many in May. How many in all?",
             "reward_spec": {"method": "rule", "ground_truth": "72"},
             "max_turns": 3}]
    prompts = build_prompts(rows, tok).prompts
    answers = iter(["#### 70", "#### 72"])
    engine = ScriptedEngine(tok, lambda context, sample: next(answers))
    turns = EnvTurns(EnvSettings("skyrl_gym:gsm8k_multi_turn", num_workers=1),
                     TurnLimits(4, 400), tok)
    try:
        ro = turns.generate(engine, PromptBatch.plain(list(prompts), n=1), PARAMS)
    finally:
        turns.close()
    end = ro.episodes[0]
    assert [m["role"] for m in ro.conversation[0]] == ["assistant", "user", "assistant"]
    assert end.error == "" and end.state == {"turns": 2, "steps": 2}
    assert end.reward == pytest.approx(0.2 / 3 + 1.0)  # format credit per turn, then correct
    with pytest.raises(ValueError, match="no environment 'nope'; it has .*gsm8k"):
        env_class("skyrl_gym:nope")
