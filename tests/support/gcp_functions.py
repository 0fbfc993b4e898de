"""``functions/gcp.py`` as the tests serve it with functions-framework
(``--source tests/support/gcp_functions.py``): the very same entry points and the runtime
``GcpRuntime.from_env`` builds, every port from its own factory (Firestore, Compute
Engine, Pub/Sub, Cloud KMS, Cloud Storage), configured by the environment variables a
deployment sets, with the endpoints pointing at the loopback fakes and emulators
(``BILLOW_GCP_COMPUTE_ENDPOINT``, ``BILLOW_GCP_LOGGING_ENDPOINT``,
``BILLOW_GCP_KMS_ENDPOINT``, ``BILLOW_GCS_ENDPOINT``, ``FIRESTORE_EMULATOR_HOST``,
``PUBSUB_EMULATOR_HOST``). No port is replaced.

The only test addition is crash injection: ``BILLOW_TEST_CRASH_POINTS=claimed,...`` kills
the process (``os._exit``) the first time it reaches each named point, remembered across
restarts in ``BILLOW_TEST_CRASH_DIR``:

* the reconcile loop's own points (``PubSubOrchestrator.crash_point``): ``claimed``,
  ``stepped``, ``published``, ``advanced``;
* right after a Compute Engine call returned (the resource exists, the caller never
  learns it): ``compute.<client>.<method>``, e.g. ``compute.instances.bulk_insert``,
  ``compute.templates.insert``, ``compute.firewalls.insert``,
  ``compute.instances.delete``. These wrap the provider's ``google.cloud.compute_v1``
  client objects, never Billow code.
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

from billow_control.runtimes import gcp  # noqa: E402

__all__ = ["api", "commands", "reaper", "reconcile"]


def crash_points() -> list[str]:
    return [p for p in os.environ.get("BILLOW_TEST_CRASH_POINTS", "").split(",") if p]


def crash_once(point: str) -> None:
    """Exit at once, without cleanup, the first time ``point`` is reached."""
    if point not in crash_points():
        return
    marker = Path(os.environ["BILLOW_TEST_CRASH_DIR"]) / point
    try:
        marker.open("x").close()
    except FileExistsError:
        return
    sys.stderr.write(f"test crash at {point}\n")
    sys.stderr.flush()
    os._exit(17)


def crash_after_compute_calls(provider: Any) -> None:
    """Make each ``compute.<client>.<method>`` crash point fire once its call returned."""
    clients = {
        "instances": provider.instances,
        "templates": provider.templates,
        "firewalls": provider.firewalls.client,
    }
    for point in crash_points():
        kind, _, rest = point.partition(".")
        if kind != "compute":
            continue
        client_name, _, method = rest.partition(".")
        client = clients[client_name]
        original = getattr(client, method)

        def wrapped(*args: Any, _original: Any = original, _point: str = point, **kw: Any) -> Any:
            result = _original(*args, **kw)
            crash_once(_point)
            return result

        setattr(client, method, wrapped)


runtime = gcp.GcpRuntime.from_env()
gcp.set_runtime(runtime)
if crash_points():
    runtime.loop.crash_point = crash_once
    crash_after_compute_calls(runtime.ports.provider)  # builds it: no Google call
