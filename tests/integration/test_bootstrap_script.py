"""The EC2 user data, run for real with ``bash`` against a stub control plane: what it does
when the kit is there, refused, late or wrong. A fake uv stands in for the real one (the
AWS e2e tests run the script with the real uv, wheel and agent)."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from billow_control.adapters.aws.ec2 import EC2Settings, render_user_data

pytestmark = pytest.mark.integration

TOKEN = "bit_stub"
# `uv venv ... DIR` makes DIR/bin/python, a stand-in agent that reports how it was run;
# `uv pip install ...` records its arguments.
FAKE_UV = b"""#!/bin/bash
if [ "$1" = venv ]; then
  dir="${@: -1}"; mkdir -p "$dir/bin"
  printf '#!/bin/bash\\necho "fake agent $* token=$BILLOW_INSTANCE_TOKEN"\\nexit 7\\n' \\
    >"$dir/bin/python"
  chmod +x "$dir/bin/python"; echo "$*" >"$BILLOW_ROOT/uv-venv"
else
  echo "$*" >"$BILLOW_ROOT/uv-pip"
fi
"""
WHEEL = b"PK\x03\x04 a billow wheel"


@dataclass
class Stub:
    """The kit route and two objects; ``kit_answers`` are served in turn (then 200)."""

    url: str = ""
    kit_answers: list[int] = field(default_factory=list)
    kit_calls: int = 0
    objects: dict[str, bytes] = field(default_factory=dict)
    uv_bytes: bytes = FAKE_UV
    machine: str = platform.machine()

    def kit(self) -> dict[str, Any]:
        uv = hashlib.sha256(FAKE_UV).hexdigest()
        wheel = hashlib.sha256(WHEEL).hexdigest()
        self.objects = {uv: self.uv_bytes, wheel: WHEEL}
        return {
            "uv": {self.machine: {"sha256": uv, "url": f"{self.url}/objects/{uv}"}},
            "wheel": {
                "sha256": wheel,
                "filename": "billow-0.1.0-py3-none-any.whl",
                "url": f"{self.url}/objects/{wheel}",
            },
            "pip_args": ["--index-url", "https://mirror.test/simple"],
            "python": ">=3.11",
        }


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            assert self.path == "/v1/agent/kit"
            state.kit_calls += 1
            status = state.kit_answers.pop(0) if state.kit_answers else 200
            if self.headers.get("authorization") != f"Bearer {TOKEN}":
                status = 401
            body = state.kit() if status == 200 else {"error": "x", "message": f"said {status}"}
            self._send(status, json.dumps(body).encode())

        def do_GET(self) -> None:
            data = state.objects.get(self.path.rsplit("/", 1)[-1])
            self._send(200 if data is not None else 404, data or b"no such object")

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def boot(stub: Stub, root: Path, token: str = TOKEN) -> tuple[str, subprocess.CompletedProcess]:
    settings = EC2Settings(
        ami_id="ami-0123456789abcdef0", instance_types=["m6i.large"], allowed_cidr="127.0.0.1"
    )
    environment = {
        "BILLOW_CONTROL_URL": stub.url,
        "BILLOW_INSTANCE_TOKEN": token,
        "BILLOW_ROLE": "worker",
        "BILLOW_CLUSTER_ID": "c-1",
    }
    script = root.parent / f"{root.name}.sh"
    script.write_text(render_user_data(environment, settings))
    env = {
        "PATH": "/usr/bin:/bin",
        "BILLOW_ROOT": str(root),
        "BILLOW_SHUTDOWN": f"touch {root}/shut-down",
        "BILLOW_SHUTDOWN_DELAY": "0",
    }
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, timeout=120)
    return (root / "var/log/billow-agent.log").read_text(), done


def test_the_script_fetches_the_kit_checks_it_and_runs_the_agent(
    stub: Stub, tmp_path: Path
) -> None:
    root = tmp_path / "instance"
    stub.kit_answers = [503, 502]  # the control plane is briefly unavailable
    log, done = boot(stub, root)
    assert done.returncode == 0 and done.stdout == b"", done.stdout  # all output in the log
    assert stub.kit_calls == 3
    assert log.count("control plane unreachable") == 2
    home = root / "opt/billow"
    assert f"kit: {home}/uv (" in log and f"kit: {home}/billow-0.1.0-py3-none-any.whl (" in log
    assert (home / "uv").read_bytes() == FAKE_UV and (home / "uv").stat().st_mode & 0o777 == 0o700
    assert (root / "uv-venv").read_text().split() == ["venv", "-q", "--python", ">=3.11"] + [
        f"{home}/agent"
    ]
    assert (root / "uv-pip").read_text().split() == [
        "pip",
        "install",
        "-q",
        "--python",
        f"{home}/agent/bin/python",
        "--index-url",
        "https://mirror.test/simple",
        f"{home}/billow-0.1.0-py3-none-any.whl",
    ]
    assert f"fake agent -m billow.agent token={TOKEN}" in log
    assert "billow: agent exited with code 7" in log
    assert (root / "shut-down").exists()  # the script's ending ran
    assert (home).stat().st_mode & 0o777 == 0o700  # umask 077
    assert (root / "var/log/billow-agent.log").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"uv_bytes": b"#!/bin/bash\necho pwned\n"}, "/opt/billow/uv does not match sha256"),
        ({"machine": "riscv64"}, f"the kit has no uv for {platform.machine()}"),
        ({"kit_answers": [409]}, "kit refused: HTTP 409"),
    ],
)
def test_a_wrong_or_refused_kit_never_runs_anything_and_shuts_down(
    stub: Stub, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    for key, value in change.items():
        setattr(stub, key, value)
    root = tmp_path / "instance"
    log, done = boot(stub, root)
    assert message in log, log
    assert stub.kit_calls == 1  # a refusal (4xx) is not retried
    assert "fake agent" not in log and not (root / "uv-venv").exists()
    assert "billow: agent exited with code 1" in log
    assert (root / "shut-down").exists()


def test_a_bad_token_is_refused_with_the_servers_message(stub: Stub, tmp_path: Path) -> None:
    log, _ = boot(stub, tmp_path / "instance", token="bit_wrong")
    assert 'kit refused: HTTP 401 {"error": "x", "message": "said 401"}' in log
