"""The agent's bootstrap exchange against a loopback control plane that answers in turn
what a real one can: "not ready" (a worker before its scheduler), a gateway's 503 page,
then the config; a refusal ends the agent with the control plane's own words."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from billow.agent import bootstrap
from tests.support.loopback_http import LoopbackHttpServer, QuietHandler

pytestmark = pytest.mark.integration

NOT_READY = (409, {"error": "not-ready", "message": "scheduler not up", "retry_after": 0.05})
CONFIG = (200, {"role": "worker", "name": "worker-0", "scheduler_address": "tls://x:1"})


class ControlPlane:
    """Answers each bootstrap POST with the next of ``answers`` (status, body or text)."""

    def __init__(self, answers: list[tuple[int, object]]) -> None:
        self.answers = answers
        self.seen: list[str | None] = []
        plane = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                plane.seen.append(self.headers.get("Authorization"))
                status, body = plane.answers.pop(0)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = LoopbackHttpServer(Handler, "control-plane")


@pytest.fixture
def plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    control = ControlPlane(list(request.param))
    with control.server:
        yield control


@pytest.mark.parametrize(
    "plane",
    [[NOT_READY, (503, "<html>Service Unavailable</html>"), NOT_READY, CONFIG]],
    indirect=True,
)
def test_a_worker_waits_through_not_ready_and_gateway_errors(plane: ControlPlane) -> None:
    config = bootstrap(plane.server.url, "inst-token", deadline=30)
    assert config == CONFIG[1]
    assert plane.seen == ["Bearer inst-token"] * 4
    assert plane.answers == []


@pytest.mark.parametrize(
    "plane", [[(401, {"error": "unauthorized", "message": "token used"})]], indirect=True
)
def test_a_refusal_ends_the_agent_with_the_control_planes_message(plane: ControlPlane) -> None:
    with pytest.raises(SystemExit, match="bootstrap refused: token used"):
        bootstrap(plane.server.url, "inst-token", deadline=30)
    assert len(plane.seen) == 1
