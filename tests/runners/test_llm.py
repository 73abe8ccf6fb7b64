"""The LLM service's own logic that needs no engine: vLLM's command line, its request counts."""

from __future__ import annotations

import pytest

from runners.llm import engine_command, engine_requests
from settings import Settings

METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="demo-llm"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="demo-llm"} 1.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 5.0
vllm:num_requests_running_total 9.0
"""


def test_engine_requests_are_running_plus_waiting() -> None:
    assert engine_requests(METRICS) == 3.0


def test_an_idle_engine_has_none() -> None:
    idle = METRICS.replace("} 2.0", "} 0.0").replace("} 1.0", "} 0.0")
    assert engine_requests(idle) == 0.0
    assert engine_requests("") == 0.0


def test_the_engine_listens_on_loopback_unless_told() -> None:
    def host(settings: Settings) -> str:
        cmd = engine_command(settings.llm, "/m", "m")
        return cmd[cmd.index("--host") + 1]

    assert host(Settings()) == "127.0.0.1"
    assert host(Settings.model_validate({"llm": {"host": "0.0.0.0"}})) == "0.0.0.0"
    with pytest.raises(ValueError, match="host"):
        Settings.model_validate({"llm": {"host": "10.0.0.5"}})  # the proxy needs loopback


def test_tool_calls_fit_their_schema_unless_told() -> None:
    """Issue 21: at vLLM's own level (auto) a forced call answered `true` for an object schema."""

    def level(llm: dict[str, str]) -> str | None:
        cmd = engine_command(Settings.model_validate({"llm": llm}).llm, "/m", "m")
        return cmd[cmd.index("--tool-strict-level") + 1] if "--tool-strict-level" in cmd else None

    hermes = {"tool_call_parser": "hermes"}
    assert level(hermes) == "parameter"
    assert level({**hermes, "tool_strict_level": "auto"}) == "auto"
    assert level({}) is None  # no parser, no tool calls for the level to pin
    with pytest.raises(ValueError, match="tool_strict_level"):
        Settings.model_validate({"llm": {**hermes, "tool_strict_level": "strict"}})
