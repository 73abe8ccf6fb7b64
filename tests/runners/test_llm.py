"""The LLM service's own logic that needs no engine: vLLM's command line, its request counts."""

from __future__ import annotations

import pytest

from runners.llm import engine_command, engine_requests, keep_adapters
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


def test_without_lora_the_engine_starts_as_before() -> None:
    cmd = engine_command(Settings().llm, "/m", "m")
    assert not [part for part in cmd if "lora" in part]
    assert keep_adapters(Settings().llm) == []


def test_lora_flags_name_each_adapter_under_its_served_name() -> None:
    llm = Settings.model_validate(
        {"llm": {"lora": {"max_loras": 2, "max_rank": 8, "runtime_updates": True,
                          "adapters": ["demo-llm-sql:abc", {"model": "x:1", "name": "sql"}]}}}
    ).llm  # fmt: skip
    assert llm.adapters() == ["demo-llm-sql", "sql"]
    cmd = engine_command(llm, "/m", "m", [("demo-llm-sql", "/a"), ("sql", "/b")])
    at = cmd.index("--enable-lora")
    assert cmd[at : at + 5] == ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"]
    assert cmd[cmd.index("--lora-modules") + 1 : cmd.index("--lora-modules") + 3] == [
        "demo-llm-sql=/a",
        "sql=/b",
    ]
    assert keep_adapters(llm) == ["--keep-adapters", f"http://127.0.0.1:{llm.port}"]


def test_lora_settings_refuse_what_vllm_would() -> None:
    with pytest.raises(ValueError, match="max_rank"):
        Settings.model_validate({"llm": {"lora": {"max_rank": 12}}})
    with pytest.raises(ValueError, match="served twice"):
        Settings.model_validate({"llm": {"lora": {"adapters": ["a:1", "a:2"]}}})
