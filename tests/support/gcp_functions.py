"""``functions/gcp.py`` as the tests serve it with functions-framework
(``--source tests/support/gcp_functions.py``): the very same entry points, with the
runtime built by ``GcpRuntime.from_env`` except for the ports the GCP twin's other half
provides (Compute Engine, Cloud KMS), which come from this test-support composition:

* ``BILLOW_TEST_PROVIDER=process``: the embedded ``LocalProcessProvider`` with its state
  under ``BILLOW_TEST_INSTANCE_DIR`` (real Dask processes), until the Compute Engine
  provider and its loopback fake are merged;
* the secret box: Fernet with the key in ``BILLOW_TEST_SECRET_KEY``, until the Cloud KMS
  box is merged.

These variables are read here only, never by ``runtimes/gcp.py``.

``BILLOW_TEST_CRASH_POINTS=claimed,published,...`` kills the process (``os._exit``) the
first time the reconcile loop reaches each named point (``PubSubOrchestrator.crash_point``);
``BILLOW_TEST_CRASH_DIR`` remembers across restarts which points already fired.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "functions", ROOT / "sdk"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from functions.gcp import api, commands, reaper, reconcile  # noqa: E402

from billow_control.adapters.clock import SystemClock  # noqa: E402
from billow_control.core.settings import ControlSettings  # noqa: E402
from billow_control.runtimes import gcp  # noqa: E402

__all__ = ["api", "commands", "reaper", "reconcile"]


def provider(settings: ControlSettings) -> Any:
    kind = os.environ["BILLOW_TEST_PROVIDER"]
    if kind != "process":
        raise ValueError(f"BILLOW_TEST_PROVIDER={kind!r}: only 'process' exists so far")
    from billow_control.adapters.local.process_provider import LocalProcessProvider

    root = Path(os.environ["BILLOW_TEST_INSTANCE_DIR"])
    return LocalProcessProvider(root, settings.deployment, SystemClock(), grace_period=2.0)


def secrets(settings: ControlSettings) -> Any:
    from billow_control.adapters.local.fernet_box import FernetSecretBox

    return FernetSecretBox(os.environ["BILLOW_TEST_SECRET_KEY"].encode())


def crash_once(point: str) -> None:
    """Exit at once, without cleanup, the first time ``point`` is reached."""
    points = [p for p in os.environ.get("BILLOW_TEST_CRASH_POINTS", "").split(",") if p]
    if point not in points:
        return
    marker = Path(os.environ["BILLOW_TEST_CRASH_DIR"]) / point
    try:
        marker.open("x").close()
    except FileExistsError:
        return
    sys.stderr.write(f"test crash at {point}\n")
    sys.stderr.flush()
    os._exit(17)


runtime = gcp.GcpRuntime.from_env(overrides={"provider": provider, "secrets": secrets})
gcp.set_runtime(runtime)
if os.environ.get("BILLOW_TEST_CRASH_POINTS"):
    runtime.loop.crash_point = crash_once
