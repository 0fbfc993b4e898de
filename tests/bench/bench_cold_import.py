"""``make bench``: a Lambda cold start of the API, against ``python -c pass``.

A cold start pays for importing the handler module *and* for whatever its first request
builds, so the figure that counts is one fresh interpreter that imports
``functions.aws`` and answers one API Gateway event, ``GET /v1/health``, through
``api_handler`` (the real route table, powertools validation, logging and metrics). This
prints, as medians of ROUNDS fresh interpreters measured in the same run:

* the wall time of ``python -c pass`` (the baseline);
* ``import functions.aws`` alone, and ``-X importtime``'s total for it;
* import plus the first ``GET /v1/health``, minus the baseline: the cold start
  (goal: at most 250 ms);
* import plus a first heartbeat that validation refuses (422): what the first request
  that validates a body pays, without a store;
* which ports and boto3 clients that request built (none: health needs no adapter, and
  the runtime is not even wired), and those a first ``GET /v1/clusters`` without a token
  builds (none: it is refused before the store is read);
* whether dask was imported (it must not be: the Lambda package has no dask);
* the same cold start of the GCP entry points, ``functions/gcp.py`` (functions-framework
  and Flask included, which the Cloud Functions runtime loads before it), answering the
  same ``GET /v1/health`` through its ``api`` function, next to the AWS figure.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from tests.support.processes import ROOT

ROUNDS = 5
GOAL_MS = 250.0
FIRST_REQUEST_ENV = {  # enough for aws_runtime to build (it makes no AWS call)
    "BILLOW_DEPLOYMENT": "bench",
    "BILLOW_CONTROL_URL": "https://api.example.test",
    "BILLOW_TABLE": "bench-",
    "BILLOW_STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:bench",
    "BILLOW_EVENT_BUS": "bench",
    "BILLOW_KMS_KEY_ID": "alias/bench",
    "BILLOW_AMI_ID": "ami-0123456789abcdef0",
    "BILLOW_INSTANCE_TYPES": "m6i.large",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
}
GCP_ENV = {  # enough for the GCP runtime to build (it makes no Google call)
    "BILLOW_DEPLOYMENT": "bench",
    "BILLOW_CONTROL_URL": "https://api.example.test",
    "GOOGLE_CLOUD_PROJECT": "bench",
    "BILLOW_RECONCILE_TOPIC": "bench-reconcile",
    "BILLOW_EVENTS_TOPIC": "bench-events",
}
GCP_FIRST_REQUEST = """
import functions.gcp as gcp, sys
from flask import Request
from werkzeug.test import EnvironBuilder
method, path, status, body = sys.argv[1:5]
request = Request(EnvironBuilder(method=method, path=path, data=body or None,
                                 content_type="application/json").get_environ())
answer, code, headers = gcp.api(request)
assert code == int(status), (code, answer)
wired = getattr(sys.modules.get("billow_control.runtimes.gcp"), "_runtime", None)
ports = " ".join(wired.ports.built()) if wired is not None else ""
print(ports or "-", any(m.split(".")[0] == "dask" for m in sys.modules))
"""
# A heartbeat body validation refuses: the heartbeat route validates before it reads the
# cluster's token from the store (routes with user tokens authenticate first).
INVALID_HEARTBEAT = '{"workers": "not a list"}'
HEARTBEAT = "/v1/clusters/c-0000000000000000/heartbeat"
DASK_LOADED = "print(any(m.split('.')[0] == 'dask' for m in __import__('sys').modules))"
FIRST_REQUEST = """
import functions.aws as aws, sys
def event(method, path, body):
    return {"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
            "headers": {"content-type": "application/json"}, "body": body or None,
            "isBase64Encoded": False, "requestContext": {"requestId": "r-1",
            "stage": "$default", "http": {"method": method, "path": path,
            "sourceIp": "127.0.0.1"}}}
class Context:
    function_name, memory_limit_in_mb, aws_request_id, function_version = "api", 512, "r-1", "1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:api"
method, path, status, body = sys.argv[1:5]
answer = aws.api_handler(event(method, path, body), Context())
assert answer["statusCode"] == int(status), answer
wired = getattr(sys.modules.get("billow_control.runtimes.aws"), "_runtime", None)
ports = " ".join(wired.ports.built()) if wired is not None else ""
clients = " ".join(wired.clients.built()) if wired is not None else ""
print(ports or "-", clients or "-", any(m.split(".")[0] == "dask" for m in sys.modules))
"""


def _env() -> dict[str, str]:
    # Only the project root on the path: functions/aws.py must find its own packages.
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**base, **FIRST_REQUEST_ENV, **GCP_ENV, "PYTHONPATH": str(ROOT)}


def wall_ms(code: str, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=_env(),
    ).stdout
    return (time.perf_counter() - start) * 1000, out.strip()


def importtime_ms(module: str) -> float:
    """``-X importtime``'s cumulative time of ``module`` and its parent packages (the
    top-level entries of the import), interpreter start-up excluded."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=_env(),
    ).stderr
    top = module.split(".")[0]
    total = 0
    for line in err.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue
        name = fields[2][1:]  # "| name" at the top level, "|   name" when nested
        if name.split(".")[0] == top:
            total += int(fields[1])
    return total / 1000


def main() -> int:
    baseline, handlers, health, importtime, invalid = [], [], [], [], []
    gcp_import, gcp_health, framework = [], [], []
    gcp_built = ""
    dask_on_import = "False"
    built = listed = ""
    for _ in range(ROUNDS):
        baseline.append(wall_ms("pass")[0])
        ms, dask_on_import = wall_ms(f"import functions.aws; {DASK_LOADED}")
        handlers.append(ms)
        ms, built = wall_ms(FIRST_REQUEST, "GET", "/v1/health", "200", "")
        health.append(ms)
        importtime.append(importtime_ms("functions.aws"))
        invalid.append(wall_ms(FIRST_REQUEST, "POST", HEARTBEAT, "422", INVALID_HEARTBEAT)[0])
        framework.append(wall_ms("import functions_framework")[0])
        gcp_import.append(wall_ms("import functions.gcp")[0])
        ms, gcp_built = wall_ms(GCP_FIRST_REQUEST, "GET", "/v1/health", "200", "")
        gcp_health.append(ms)
    listed = wall_ms(FIRST_REQUEST, "GET", "/v1/clusters", "401", "")[1]
    base, imp, first = (statistics.median(x) for x in (baseline, handlers, health))
    cold = first - base
    ports, clients, dask_on_first = built.split()
    print(f"Lambda cold start of the API, median of {ROUNDS} fresh interpreters")
    print(f"  python -c pass                        {base:7.0f} ms  (baseline)")
    print(f"  import functions.aws                  {imp:7.0f} ms  (+{imp - base:.0f} ms)")
    print(f"  -X importtime total of that import    {statistics.median(importtime):7.0f} ms")
    print(
        f"  import + first GET /v1/health         {first:7.0f} ms  "
        f"(+{cold:.0f} ms over the baseline, {first / base:.1f}x; goal <= {GOAL_MS:.0f} ms)"
    )
    rejected = statistics.median(invalid) - base
    print(
        f"  import + first heartbeat, refused 422 by validation (no store)"
        f"  +{rejected:.0f} ms over the baseline"
    )
    print(f"  built by GET /v1/health: ports {ports}, boto3 clients {clients}")
    l_ports, l_clients, _ = listed.split()
    print(f"  built by GET /v1/clusters (no token, 401): ports {l_ports}, clients {l_clients}")
    print(f"  dask imported: on import {dask_on_import}, after the first request {dask_on_first}")
    ok = cold <= GOAL_MS and dask_on_import == "False" and dask_on_first == "False"
    print("  goal met" if ok else "  GOAL MISSED")
    g_imp, g_first = statistics.median(gcp_import), statistics.median(gcp_health)
    g_ports, g_dask = gcp_built.split()
    print("Cloud Functions cold start of the API (functions/gcp.py), same run")
    ff = statistics.median(framework)
    print(f"  import functions_framework (the host) {ff:7.0f} ms  (+{ff - base:.0f} ms)")
    print(f"  import functions.gcp                  {g_imp:7.0f} ms  (+{g_imp - base:.0f} ms)")
    print(
        f"  import + first GET /v1/health         {g_first:7.0f} ms  "
        f"(+{g_first - base:.0f} ms over the baseline; "
        f"{(g_first - base) / cold:.2f}x the AWS cold start)"
    )
    print(f"  built by GET /v1/health: ports {g_ports}; dask imported: {g_dask}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
