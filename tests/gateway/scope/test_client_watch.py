"""A client that leaves before its answer begins: its request is cancelled, giving up its place
in a backend's queue (gateway/scope/pipeline.py ClientWatch), at the ASGI level."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.scope.admission import Admission
from gateway.scope.pipeline import Pipeline, PipelineParts
from settings import parse_settings

BODY = json.dumps({"model": "m"}).encode()


def parts() -> PipelineParts:
    return PipelineParts.from_settings(parse_settings({}))


class Client:
    """The client side of one ASGI request: sends its body, then leaves when told."""

    def __init__(self) -> None:
        self.leave = asyncio.Event()
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if not hasattr(self, "_body_sent"):
            self._body_sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)


def scope() -> Scope:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [],
            "query_string": b"", "state": {}}  # fmt: skip


def queued_app(admission: Admission, entered: list[str]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the body, as every route reads it first
        async with admission.slot():
            entered.append("served")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

    return app


async def test_a_client_that_leaves_while_queued_gives_up_its_place(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admission = Admission("b", max_inflight=1, max_queue=4, queue_timeout_s=30)
    await admission.acquire()  # the one slot is taken: the request will queue
    entered: list[str] = []
    pipeline = Pipeline(queued_app(admission, entered), paths=("/v1/chat/completions",),
                        parts=parts)  # fmt: skip
    client = Client()
    caplog.set_level(logging.INFO, "gateway.access")
    serving = asyncio.create_task(pipeline(scope(), client.receive, client.send))
    await asyncio.sleep(0.05)
    assert admission.queued == 1
    client.leave.set()
    await asyncio.wait_for(serving, 2)  # returns: nothing to answer, no error
    assert admission.queued == 0 and entered == [] and client.sent == []
    admission.release()
    assert admission.inflight == 0  # the place was given up, not handed to no one
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [line["status"] for line in logged] == [499]


async def test_a_disconnect_after_the_answer_began_reaches_the_response() -> None:
    """A streaming response listens for the disconnect itself: the watch hands it on, and
    does not cancel a request whose answer has begun."""
    got: list[str] = []

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        got.append((await receive())["type"])  # what Starlette's listen_for_disconnect does
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    pipeline = Pipeline(streaming, paths=("/v1/chat/completions",), parts=parts)
    client = Client()
    serving = asyncio.create_task(pipeline(scope(), client.receive, client.send))
    await asyncio.sleep(0.05)
    client.leave.set()
    await asyncio.wait_for(serving, 2)
    assert got == ["http.disconnect"]
    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]


async def test_a_client_that_stays_is_served() -> None:
    admission = Admission("b", max_inflight=1, max_queue=4, queue_timeout_s=30)
    entered: list[str] = []
    pipeline = Pipeline(queued_app(admission, entered), paths=("/v1/chat/completions",),
                        parts=parts)  # fmt: skip
    client = Client()
    await asyncio.wait_for(pipeline(scope(), client.receive, client.send), 2)
    assert entered == ["served"] and client.sent[0]["status"] == 200
