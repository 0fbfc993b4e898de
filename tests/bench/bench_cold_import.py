"""``make bench``: the cold import of the Lambda entry points, against ``python -c pass``.

A Lambda cold start pays for importing the handler module before the first request. This
prints, as medians of ROUNDS fresh interpreters measured in the same run:

* the wall time of ``python -c pass`` (the baseline) and of ``python -c "import
  functions.aws"``, and their difference (what importing the handlers costs);
* the same import's own total from ``-X importtime`` (cumulative microseconds of the
  top-level imports, interpreter start-up excluded);
* for context, the wall time of the import plus what the first request builds
  (``functions.aws.runtime()`` and ``resolver()``: boto3 clients, pydantic models, the
  route table), paid once per container inside its first invocation;
* whether dask was imported by either (it must not be: the Lambda package has no dask).

Goal: the import costs under 300 ms over the baseline.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from tests.support.processes import ROOT

ROUNDS = 5
GOAL_MS = 300.0
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
DASK_LOADED = "print(any(m.split('.')[0] == 'dask' for m in __import__('sys').modules))"


def _env() -> dict[str, str]:
    # Only the project root on the path: functions/aws.py must find its own packages.
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**base, **FIRST_REQUEST_ENV, "PYTHONPATH": str(ROOT)}


def wall_ms(code: str) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code],
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
    baseline, handlers, first, importtime = [], [], [], []
    dask_on_import = dask_on_first = "False"
    for _ in range(ROUNDS):
        baseline.append(wall_ms("pass")[0])
        ms, dask_on_import = wall_ms(f"import functions.aws; {DASK_LOADED}")
        handlers.append(ms)
        ms, dask_on_first = wall_ms(
            f"import functions.aws as a; a.runtime(); a.resolver(); {DASK_LOADED}"
        )
        first.append(ms)
        importtime.append(importtime_ms("functions.aws"))
    base, imp, req = (statistics.median(x) for x in (baseline, handlers, first))
    cost = imp - base
    print(f"cold import of functions.aws, median of {ROUNDS} fresh interpreters")
    print(f"  python -c pass                     {base:7.0f} ms  (baseline)")
    print(f"  import functions.aws               {imp:7.0f} ms  ({imp / base:.1f}x baseline)")
    print(f"  import cost over the baseline      {cost:7.0f} ms  (goal < {GOAL_MS:.0f} ms)")
    print(f"  -X importtime total                {statistics.median(importtime):7.0f} ms")
    print(f"  import, runtime and route table    {req:7.0f} ms  (what the first request adds)")
    print(f"  dask imported: on import {dask_on_import}, after the first build {dask_on_first}")
    ok = cost < GOAL_MS and dask_on_import == "False" and dask_on_first == "False"
    print("  goal met" if ok else "  GOAL MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
