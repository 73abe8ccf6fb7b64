"""Lifecycle of a real bundle under real signals: SIGKILL of each process kind heals without a
person (the vLLM server, its supervisor, the gateway and runner workers); SIGTERM drains every
request in flight and leaves nothing behind; a drain deadline shorter than a stream ends that
stream with an error event.

These run on the session's bundle (the routing stack's) after every other test: they are marked
`destructive`, which tests/conftest.py orders last, since the drain stops the bundle. Times to
recovery are printed (`-s` shows them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.conftest import RoutingStack
from tests.media import audio_bytes, image_bytes, noise_image, tone
from tests.servers.bundle import remote_gateway_process
from tests.servers.process import ServerProcess
from tests.servers.upstream import upstream_process

pytestmark = [pytest.mark.integration, pytest.mark.destructive, pytest.mark.timeout(600)]

LLM, RESNET, WHISPER = "demo-llm", "demo-resnet", "demo-whisper"
DRAIN_S = 60.0
RECOVERY_S = 300.0


@pytest.fixture(scope="module")
def bundle(request: pytest.FixtureRequest) -> ServerProcess:
    if os.environ.get("BUNDLE_URL"):
        pytest.skip("kills and stops the bundle: only the one this session started")
    stack: RoutingStack = request.getfixturevalue("routing_stack")
    assert stack.config.get("drain", {}).get("timeout_s", DRAIN_S) == DRAIN_S
    return stack.bundle


# -- the bundle's processes ----------------------------------------------------------------------


def descendants(server: ServerProcess) -> list[psutil.Process]:
    assert server.proc is not None
    return psutil.Process(server.proc.pid).children(recursive=True)


def find(server: ServerProcess, match: Callable[[list[str]], bool]) -> psutil.Process:
    for proc in descendants(server):
        try:
            if match(proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            continue
    raise LookupError("no such process in the bundle")


def worker(name: str) -> Callable[[list[str]], bool]:
    def match(cmdline: list[str]) -> bool:
        joined = " ".join(cmdline)
        return "_bentoml_impl.worker.service" in joined and f"--service-name {name} " in joined

    return match


def supervisor(cmdline: list[str]) -> bool:
    return "runners.supervisor" in " ".join(cmdline)


# -- requests per modality -----------------------------------------------------------------------

IMAGE = image_bytes(noise_image(1))
AUDIO = audio_bytes(tone(2.0, 440, 16_000), 16_000)


def chat(url: str, max_tokens: int = 4, timeout: float = 30) -> httpx.Response:
    body = {"model": LLM, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens, "ignore_eos": True}  # fmt: skip
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)


def classify(url: str, timeout: float = 30) -> httpx.Response:
    files = {"file": ("x.png", IMAGE, "image/png")}
    return httpx.post(
        f"{url}/v1/images/classifications", data={"model": RESNET}, files=files, timeout=timeout
    )


def transcribe(url: str, timeout: float = 60) -> httpx.Response:
    files = {"file": ("x.wav", AUDIO, "audio/wav")}
    return httpx.post(
        f"{url}/v1/audio/transcriptions", data={"model": WHISPER}, files=files, timeout=timeout
    )


def stream(
    url: str, max_tokens: int, started: threading.Event | None = None
) -> tuple[int, list[str]]:
    """A streamed chat: (status, the data lines); `started` is set at the first data line."""
    body = {"model": LLM, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "max_tokens": max_tokens, "ignore_eos": True}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
        lines = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                lines.append(line)
                if started is not None:
                    started.set()
        return r.status_code, lines


def held_upload(url: str, release: threading.Event) -> httpx.Response:
    """A transcription whose body arrives in two halves, the second once `release` is set. The
    gateway counts a request from its headers on, so this one stays in flight, and the drain
    goes on, until the test lets it finish: the drain cannot end before the checks made during
    it, however fast the engine finishes the streams."""
    files = {"file": ("x.wav", AUDIO, "audio/wav")}
    request = httpx.Request("POST", f"{url}/v1/audio/transcriptions", data={"model": WHISPER},
                            files=files)  # fmt: skip
    body = request.read()

    def halves() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        release.wait(DRAIN_S)
        yield body[len(body) // 2 :]

    headers = {"content-type": request.headers["content-type"], "content-length": str(len(body))}
    return httpx.post(request.url, content=halves(), headers=headers, timeout=120)


def answers_every_modality(url: str) -> bool:
    try:
        return all(call(url).status_code == 200 for call in (chat, classify, transcribe))
    except httpx.HTTPError:
        return False


def time_to_recover(url: str, since: float | None = None) -> float:
    started = time.monotonic() if since is None else since
    while time.monotonic() - started < RECOVERY_S:
        if answers_every_modality(url):
            return time.monotonic() - started
        time.sleep(1.0)
    pytest.fail(f"the bundle did not answer every modality again within {RECOVERY_S:.0f} s")


# -- self-healing --------------------------------------------------------------------------------

# The vision worker is killed under load below; the supervisor with its engine in the test after.
KILLS: list[tuple[str, Callable[[list[str]], bool]]] = [
    ("speech worker", worker("speech")),
    ("gateway worker", worker("gateway")),
]


@pytest.mark.parametrize(("kind", "match"), KILLS, ids=[k for k, _ in KILLS])
def test_sigkill_of_each_process_kind_heals_without_a_person(
    bundle: ServerProcess, kind: str, match: Callable[[list[str]], bool]
) -> None:
    assert answers_every_modality(bundle.url)
    kill_and_heal(bundle, kind, match, find(bundle, match))


def kill_and_heal(
    bundle: ServerProcess, kind: str, match: Callable[[list[str]], bool], victim: psutil.Process
) -> None:
    """SIGKILL `victim`: what it started goes with it, every modality answers again, and a new
    process matching `match` has replaced it."""
    forked = victim.children(recursive=True)
    victim.kill()
    killed = time.monotonic()
    # What it started goes first: until then the old engine may still answer (a supervisor's
    # vLLM lives on for a moment), and "answered again" would not be the replacement's answer.
    _, alive = psutil.wait_procs(forked, timeout=30)
    assert not alive, f"what the killed {kind} had started outlived it: {alive}"
    seconds = time_to_recover(bundle.url, since=killed)
    print(f"\nSIGKILL {kind} (pid {victim.pid}): every modality answered again in {seconds:.1f} s")
    replacement = find(bundle, match)
    assert replacement.pid != victim.pid


def test_sigkill_of_the_vision_worker_under_load_loses_no_request(bundle: ServerProcess) -> None:
    """BentoML respawns the worker; the gateway retries calls that could not reach it."""
    victim = find(bundle, worker("vision"))
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(classify, bundle.url, 120) for _ in range(200)]
        time.sleep(1.0)
        victim.kill()
        killed = time.monotonic()
        statuses = [f.result().status_code for f in futures]
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
    seconds = time_to_recover(bundle.url, since=killed)
    print(f"\nSIGKILL vision worker under load: every modality answered again in {seconds:.1f} s")
    assert find(bundle, worker("vision")).pid != victim.pid


def engine(supervisor: psutil.Process) -> psutil.Process | None:
    """The supervisor's vLLM server, if it has one now."""
    for child in supervisor.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if "vllm.entrypoints.openai.api_server" in " ".join(child.cmdline()):
                return child
    return None


def test_sigkill_of_the_engine_then_of_its_supervisor_heals_without_a_person(
    bundle: ServerProcess,
) -> None:
    """Two kills, one engine start (each takes ~90 s here): the vLLM server killed is a quick 503
    naming the backend, its engine processes go with it, and the supervisor starts another; the
    supervisor killed while that one loads takes it along, and BentoML's restarted supervisor
    brings the LLM back. (That a restarted engine serves is the same start as the first one; the
    supervisor's restart policy is tests/runners/test_supervisor.py's.)"""
    assert answers_every_modality(bundle.url)
    keeper = find(bundle, supervisor)
    server = engine(keeper)
    assert server is not None, "the supervisor runs no vLLM server"
    forked = server.children(recursive=True)  # vLLM's engine core and its workers
    assert forked, "expected the server to have forked its engine processes"
    server.kill()
    server.wait(10)
    started = time.monotonic()
    refused = chat(bundle.url, timeout=10)
    assert refused.status_code == 503, refused.text
    assert "'llm'" in refused.json()["error"]["message"], refused.text  # names the backend
    assert time.monotonic() - started < 5, "a down engine must fail fast, not hang"
    _, alive = psutil.wait_procs(forked, timeout=10)
    assert not alive, f"the killed server's engine processes outlived it: {alive}"

    deadline = time.monotonic() + 30
    while (restarted := engine(keeper)) is None or restarted.pid == server.pid:
        assert time.monotonic() < deadline, "the supervisor started no new engine within 30 s"
        time.sleep(0.2)
    kill_and_heal(bundle, "supervisor", supervisor, keeper)


# -- drain ---------------------------------------------------------------------------------------


def test_sigterm_drains_every_request_in_flight_then_exits_clean(bundle: ServerProcess) -> None:
    """Runs last: it stops the module's bundle."""
    assert answers_every_modality(bundle.url)
    processes = [psutil.Process(bundle.proc.pid), *descendants(bundle)]  # type: ignore[union-attr]
    release = threading.Event()
    with ThreadPoolExecutor(16) as pool:
        # the held upload, images and audio first: the gateway accepts connections in order, so
        # once the streams have their first chunks these are in the gateway too (a request still
        # in the socket's backlog when the drain starts is a new request, answered 503 by design)
        held = pool.submit(held_upload, bundle.url, release)
        images = [pool.submit(classify, bundle.url, 120) for _ in range(4)]
        audios = [pool.submit(transcribe, bundle.url, 120) for _ in range(2)]
        started = [threading.Event() for _ in range(4)]
        streams = [pool.submit(stream, bundle.url, 900, event) for event in started]
        assert all(event.wait(60) for event in started), "the streams did not start"
        pending = sum(not f.done() for f in [held, *streams, *images, *audios])
        # the last stream has just begun; an early one may already have finished its tokens
        assert any(not f.done() for f in streams), "a stream must still run when SIGTERM lands"
        signalled = time.monotonic()
        bundle.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        try:
            time.sleep(0.5)
            refused = chat(bundle.url, timeout=10)
            ready = httpx.get(f"{bundle.url}/readyz", timeout=10)
        finally:
            release.set()
        results = wait_all([held, *streams, *images, *audios])
    code = bundle.proc.wait(DRAIN_S + 10)  # type: ignore[union-attr]
    took = time.monotonic() - signalled
    print(f"\nSIGTERM with {pending} requests in flight: exit {code} after {took:.1f} s")
    assert refused.status_code == 503 and "retry-after" in refused.headers
    assert refused.json()["error"]["code"] == "draining"
    assert ready.status_code == 503
    for status, lines in [r for r in results if isinstance(r, tuple)]:
        assert status == 200 and lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert not any("error" in c for c in chunks), "a stream was cut"
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert chunks[-1]["choices"][0]["finish_reason"] == "length" and text
    others = [r for r in results if isinstance(r, httpx.Response)]
    assert [r.status_code for r in others] == [200] * len(others)
    assert code == 0 and took < DRAIN_S + 10
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive, f"processes outlived the bundle: {[p.info for p in alive]}"


def wait_all(futures: list[Future[Any]]) -> list[Any]:
    return [f.result(timeout=DRAIN_S + 30) for f in futures]


# -- a drain deadline shorter than a stream ------------------------------------------------------


def test_a_stream_longer_than_the_drain_deadline_ends_with_an_error_event() -> None:
    """The gateway alone (`service:RemoteGateway`) in front of a deterministic upstream whose
    stream lasts 8 s; the drain deadline is 1 s."""
    upstream = upstream_process(token_ms=20, tokens=400).start()
    config = {"drain": {"timeout_s": 1.0, "final_grace_s": 2.0},
              "routing": {"backends": {"up": {"kind": "openai", "url": upstream.url}},
                          "models": {"fixed-llm": {"backend": "up"}}}}  # fmt: skip
    gateway = remote_gateway_process(config, timeout_s=120).start()
    url = gateway.url
    try:
        body = {"model": "fixed-llm", "messages": [{"role": "user", "content": "hi"}],
                "stream": True}  # fmt: skip
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            lines = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                if len(lines) == 5:
                    os.kill(gateway.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        code = gateway.proc.wait(20)  # type: ignore[union-attr]
    finally:
        gateway.stop()
        upstream.stop()
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "draining" and "drain deadline" in error["message"]
    assert 5 < len(lines) < 400, "the stream was cut, not finished"
    assert code == 0
