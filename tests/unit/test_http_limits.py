"""``LimitedHttpToolsProtocol`` fed bytes directly: how reads split never changes the answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from billow_control.runtimes.http_proxy import LimitedHttpToolsProtocol, ServerLimits

pytestmark = pytest.mark.unit

LIMITS = ServerLimits(max_header_bytes=1000, read_timeout=0.2, min_body_rate=1000)


class Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 80)}.get(name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def status(self) -> int | None:
        """The status of the first response written, if any."""
        return int(self.written.split(b" ", 2)[1]) if self.written else None

    def error(self) -> str:
        return json.loads(self.written.partition(b"\r\n\r\n")[2])["error"]


async def echo_length(scope: dict, receive: Any, send: Any) -> None:
    """Answers 200 with the length of the body it read."""
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    answer = str(size).encode()
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(cancel(asyncio.all_tasks(loop)))
    loop.close()


async def cancel(tasks: set[asyncio.Task]) -> None:
    """Cancel apps still waiting for a body that never came."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def connect(loop: asyncio.AbstractEventLoop) -> tuple[LimitedHttpToolsProtocol, Transport]:
    config = uvicorn.Config(echo_length, log_level="critical")
    protocol_class = LimitedHttpToolsProtocol.with_limits(LIMITS)
    protocol = protocol_class(config, ServerState(), app_state={}, _loop=loop)
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


def settle(loop: asyncio.AbstractEventLoop, seconds: float = 0.05) -> None:
    loop.run_until_complete(asyncio.sleep(seconds))


def post(body: bytes, extra: bytes = b"") -> bytes:
    head = f"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
    return head + extra + b"\r\n" + body


def test_a_whole_request_in_one_read_has_a_small_head(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = connect(loop)
    protocol.data_received(post(b"x" * 5000))  # far more than the head limit, in one read
    settle(loop)
    assert transport.status() == 200 and transport.written.endswith(b"5000")


def test_two_requests_in_one_read_are_both_served(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = connect(loop)
    protocol.data_received(post(b"a" * 3000) + post(b"b" * 3000))
    settle(loop)
    assert transport.written.count(b"HTTP/1.1 200") == 2


@pytest.mark.parametrize("read", [1, 100, 10_000])
def test_a_head_over_the_limit_is_431_however_it_is_read(
    loop: asyncio.AbstractEventLoop, read: int
) -> None:
    protocol, transport = connect(loop)
    data = post(b"{}", b"X-Big: " + b"a" * 1200 + b"\r\n")
    for i in range(0, len(data), read):
        if transport.closed:
            break
        protocol.data_received(data[i : i + read])
    settle(loop)
    assert transport.status() == 431 and transport.error() == "headers-too-large"
    assert transport.closed


def test_a_head_that_never_ends_is_refused_within_the_limit_and_a_read(
    loop: asyncio.AbstractEventLoop,
) -> None:
    protocol, transport = connect(loop)
    protocol.data_received(b"GET /x HTTP/1.1\r\nX-Big: ")
    fed = 0
    while not transport.closed and fed < 100_000:
        protocol.data_received(b"a" * 500)
        fed += 500
    assert transport.status() == 431 and fed <= LIMITS.max_header_bytes + 500


def test_unparseable_bytes_are_a_json_400(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = connect(loop)
    protocol.data_received(b"GET /x y z\r\n\r\n")
    assert transport.status() == 400 and transport.error() == "bad-request"


def test_a_request_not_read_in_time_is_408(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = connect(loop)
    protocol.data_received(post(b"x" * 100)[:-10])  # ten bytes of body never come
    settle(loop, LIMITS.read_timeout + 0.1)
    assert transport.status() == 408 and transport.error() == "request-timeout"
    assert transport.closed


def test_a_declared_body_gets_time_by_its_size(loop: asyncio.AbstractEventLoop) -> None:
    """min_body_rate 1000 B/s: 300 bytes add 0.3 s to the 0.2 s of the deadline."""
    protocol, transport = connect(loop)
    data = post(b"x" * 300)
    protocol.data_received(data[:-100])
    settle(loop, 0.35)
    assert not transport.written
    protocol.data_received(data[-100:])
    settle(loop)
    assert transport.status() == 200


def test_a_silent_connection_is_closed_without_an_answer(
    loop: asyncio.AbstractEventLoop,
) -> None:
    _, transport = connect(loop)
    settle(loop, LIMITS.read_timeout + 0.1)
    assert transport.closed and not transport.written


def test_the_deadline_is_per_request_not_per_connection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    protocol, transport = connect(loop)
    protocol.data_received(post(b"x"))
    settle(loop, LIMITS.read_timeout * 0.75)
    protocol.data_received(post(b"y"))
    settle(loop, LIMITS.read_timeout * 0.75)
    assert transport.written.count(b"HTTP/1.1 200") == 2 and not transport.closed
