"""Tools: schemas, the built-ins, and calls run isolated by the reward service's processes."""

import pytest

from rlft.tools.base import load_tools, schema_of, tool
from rlft.workers.tools import ToolRequest, ToolRunner

USER_TOOLS = '''
import sys, time

def shout(text: str, times: int = 1) -> str:
    """Repeat text in capitals.

    Args:
        text: what to shout
    """
    return (text.upper() + " ") * times

def boom(x: int) -> str:
    raise RuntimeError("boom " + str(x))

def hang() -> str:
    time.sleep(60)
    return "never"

def chatty() -> str:
    print("x" * 1_000_000)
    sys.stderr.write("y" * 1_000_000)
    return "done"

def huge() -> str:
    return "z" * 1_000_000

def junk() -> object:
    return object()
'''


@pytest.fixture(scope="module")
def user_tools(tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "tools.py"
    path.write_text(USER_TOOLS)
    return str(path)


def test_user_tool_schema_and_explicit_schema(user_tools):
    spec, = load_tools([f"{user_tools}:shout"])
    assert spec.name == "shout"
    assert spec.schema["parameters"] == {
        "type": "object", "required": ["text"],
        "properties": {"text": {"type": "string", "description": "what to shout"},
                       "times": {"type": "integer"}}}
    given = {"name": "f2", "description": "d", "parameters": {"type": "object", "properties": {}}}
    f = tool(schema=given)(lambda: "ok")
    with pytest.raises(TypeError, match="no type hint"):
        schema_of(lambda a: a)
    assert f.rlft_tool_schema == given
    with pytest.raises(ValueError, match="more than one tool is called"):
        load_tools(["calculator", "calculator"])


def test_failures_become_messages_and_the_runner_goes_on(user_tools):
    refs = [f"{user_tools}:{n}" for n in ("shout", "boom", "hang", "chatty", "huge", "junk")]
    with ToolRunner([*refs, "calculator"], timeout_s=1.5, max_chars=100, num_workers=1) as runner:
        got = runner.run([
            ToolRequest("shout", {"text": "hi", "times": 2}),
            ToolRequest("boom", {"x": 3}),
            ToolRequest("hang", {}),
            ToolRequest("chatty", {}),
            ToolRequest("huge", {}),
            ToolRequest("junk", {}),
            ToolRequest("shout", {"txt": "typo"}),
            ToolRequest("nope", {}),
            ToolRequest("calculator", None, error="could not parse the call: not JSON"),
            ToolRequest("calculator", {"expression": "123456789 * 987654321"}),
        ])
        assert [(r.ok, r.kind) for r in got] == [
            (True, "ok"), (False, "raised"), (False, "timeout"), (True, "ok"), (True, "ok"),
            (False, "raised"), (False, "raised"), (False, "raised"), (False, "unparsed"),
            (True, "ok")]
        assert got[0].content == "HI HI "
        assert "RuntimeError: boom 3" in got[1].content
        assert got[2].content == "Error: hang did not finish within 1.5 s"
        assert got[3].content == "done"  # 2 MB printed: swallowed by the process
        assert got[4].content.startswith("z" * 100 + "... [999900 more")
        assert "neither text nor JSON" in got[5].content
        assert "unexpected keyword argument 'txt'" in got[6].content
        assert "unknown tool 'nope'" in got[7].content
        assert got[8].content == "Error: could not parse the call: not JSON"
        assert got[9].content == str(123456789 * 987654321)
        # The hung process was replaced: the runner still answers.
        again, = runner.run([ToolRequest("shout", {"text": "ok"})])
        assert again.content == "OK " and runner.seconds > 1.5


def test_config_keys_reach_the_rollout_workers(user_tools):
    from rlft.config import ConfigError, load_config
    from rlft.run.turn_settings import tool_settings

    cfg = load_config(None, ["rollout.tools=[calculator, lookup]", "rollout.max_turns=3",
                             "rollout.tool_timeout_s=2.5"])
    got = tool_settings(cfg)
    assert (got.refs, got.max_turns, got.timeout_s) == (("calculator", "lookup"), 3, 2.5)
    cfg = load_config(None, ["rollout.tools=[calculater]"])
    with pytest.raises(ConfigError, match=r"rollout.tools: unknown tool 'calculater'. Did you mean "
                                          r"'calculator'\?"):
        tool_settings(cfg)
