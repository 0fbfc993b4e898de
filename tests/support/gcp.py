"""Google's Firestore and Pub/Sub emulators (shipped with the gcloud CLI) on loopback.

``emulator(kind, log_dir)`` starts one on a free port, waits (bounded) for it to answer,
and stops its process group by PID on exit (the launch scripts fork ``java``). When the
gcloud SDK or the emulator is missing the tests that need it are skipped with a loud
reason, or fail when ``BILLOW_REQUIRE_EMULATORS=1`` (CI), so a missing emulator never
passes silently there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.processes import free_port, http_ok, stop_process, wait_until

EMULATORS = {
    "firestore": (
        "platform/cloud-firestore-emulator/cloud_firestore_emulator",
        ["start"],
        "FIRESTORE_EMULATOR_HOST",
    ),
    "pubsub": ("platform/pubsub-emulator/bin/cloud-pubsub-emulator", [], "PUBSUB_EMULATOR_HOST"),
}
START_TIMEOUT = 90.0  # Java on two busy cores


def sdk_root() -> Path | None:
    """The gcloud SDK root (``gcloud info``), or ``None`` without gcloud."""
    if os.environ.get("BILLOW_GCLOUD_SDK_ROOT"):
        return Path(os.environ["BILLOW_GCLOUD_SDK_ROOT"])
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    out = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def unavailable(reason: str) -> None:
    """Skip loudly, or fail under ``BILLOW_REQUIRE_EMULATORS=1``."""
    message = f"GOOGLE EMULATOR UNAVAILABLE, GCP tests not run: {reason}"
    if os.environ.get("BILLOW_REQUIRE_EMULATORS") == "1":
        pytest.fail(message + " (BILLOW_REQUIRE_EMULATORS=1)", pytrace=False)
    pytest.skip(message)


@contextmanager
def emulator(kind: str, log_dir: Path) -> Iterator[str]:
    """Start the ``kind`` emulator (``firestore`` or ``pubsub``); yields ``host:port`` and
    sets the variable its client library reads for the duration."""
    relative, args, variable = EMULATORS[kind]
    root = sdk_root()
    if root is None:
        unavailable("the gcloud CLI is not installed")
    assert root is not None
    exe = root / relative
    if not exe.exists():
        unavailable(f"{exe} is missing (install the gcloud component)")
    if shutil.which("java") is None:
        unavailable("java is not installed (the emulators need Java 11+)")
    port = free_port()
    host = f"127.0.0.1:{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{kind}-emulator.log", "wb") as out:
        proc = subprocess.Popen(
            [str(exe), *args, "--host=127.0.0.1", f"--port={port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    previous = os.environ.get(variable)
    try:
        wait_until(
            lambda: proc.poll() is not None or http_ok(f"http://{host}/"),
            START_TIMEOUT,
            f"the {kind} emulator",
            interval=0.25,
        )
        if proc.poll() is not None:
            log = (log_dir / f"{kind}-emulator.log").read_text(errors="replace")
            raise RuntimeError(f"the {kind} emulator exited:\n{log[-2000:]}")
        os.environ[variable] = host
        yield host
    finally:
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous
        stop_process(proc)


def new_project() -> str:
    """A fresh project id: the emulators keep each project's data apart."""
    return f"billow-test-{uuid.uuid4().hex[:10]}"


def clear_firestore(host: str, project: str) -> None:
    """Delete every document of ``project`` on the emulator (its reset endpoint)."""
    url = f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents"
    httpx.delete(url, timeout=30).raise_for_status()
