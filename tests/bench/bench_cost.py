"""``make bench``: what the AWS control plane costs per cluster-hour, at list prices.

One real cluster (a scheduler and 2 workers, booted from their user data) runs its whole
life on moto: the Lambda handlers of ``functions/aws.py`` behind a loopback API Gateway,
the real lifecycle state machine (moto executes it; its tasks reach the reconcile handler
through SQS), DynamoDB, EC2, KMS and EventBridge. Every request is counted where AWS would
bill it:

* API Gateway (HTTP API): each request the gateway passes to the API function;
* Lambda: each invocation of a handler (API, reconcile, reaper), with its measured
  duration, billed at the ``memorySize`` of ``serverless.yml``;
* DynamoDB (on demand): read and write request units, from the sizes of the items each
  call of the handlers reads or writes (1 RRU per 4 KB strongly consistent, half that
  eventually consistent; 1 WRU per 1 KB; transactions twice);
* Step Functions (Express): each execution ($1.00 per million) and its duration in
  GB-seconds at the 64 MB minimum ($0.00001667 per GB-second), the duration rounded up to
  100 ms and measured from the execution's start to its end as moto reports them (moto
  runs an Express machine like a Standard one, so it can list them; AWS cannot);
* EventBridge: events put.

Phases: **start** (create to ready, the SDK's polling included), **steady** (the cluster
ready and untouched; the heartbeat policy's steady interval is shortened to
``STEADY_INTERVAL`` so that a short window holds several heartbeats, and the measured cost
per heartbeat is multiplied by the heartbeats of an hour at the shipped setting), the
**reaper** (passes with this cluster active, minus one with none: the cluster's share; the
first pass that sees it opens its usage records, and later passes rewrite them only every
``meter.SEEN_REFRESH`` passes, so an hour is priced as that many writing passes and the
rest reading ones; the pass itself, every minute, is the idle deployment's fixed cost) and
**stop**.

Durations are this machine's (about twice as slow as the one the issues were measured
on); Lambda's x86 price is used. Prices: us-east-1 list prices (see ``PRICES``).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.client
import httpx
import yaml

import billow
from billow_control.core.meter import SEEN_REFRESH
from tests.support.aws import FakeLambdaContext
from tests.support.processes import ROOT, moto_server, wait_until

STEADY_INTERVAL = 2.0  # seconds, for the measurement window only
STEADY_WINDOW = 12.0
SHIPPED_STEADY_INTERVAL = 60.0  # billow.heartbeat-steady-interval
GOAL_PER_CLUSTER_HOUR = 0.0005
REAL_START_SECONDS = 60.0  # an EC2 bring-up, for the "what a real start costs" line
SHIPPED_RECONCILE_INTERVAL = 5.0  # runtimes/aws.py AWS_DEFAULTS
SHIPPED_POLL_INTERVAL = 1.0  # runtimes/aws.py AWS_DEFAULTS: the SDK's looks while it waits
REAPER_CONTEXT = FakeLambdaContext("billow-reaper")
PRICES = {  # USD, us-east-1 list prices
    "api_request": 1.00 / 1e6,  # HTTP API, first 300 million a month
    "lambda_request": 0.20 / 1e6,
    "lambda_gb_second": 0.0000166667,  # x86
    "dynamodb_rru": 0.125 / 1e6,  # on demand, since November 2024
    "dynamodb_wru": 0.625 / 1e6,
    "sfn_express_request": 1.00 / 1e6,  # Express workflows, per execution
    "sfn_express_gb_second": 0.00001667,  # Express workflows, first 1,000 GB-hours
    "event": 1.00 / 1e6,  # EventBridge custom events
}


@dataclass
class Usage:
    """Billable units of one phase."""

    api_requests: int = 0
    invocations: Counter = field(default_factory=Counter)
    gb_seconds: float = 0.0
    rru: float = 0.0
    wru: float = 0.0
    executions: int = 0
    execution_gb_seconds: float = 0.0
    events: int = 0
    calls: Counter = field(default_factory=Counter)
    routes: Counter = field(default_factory=Counter)

    def cost(self) -> dict[str, float]:
        return {
            "API Gateway requests": self.api_requests * PRICES["api_request"],
            "Lambda requests": sum(self.invocations.values()) * PRICES["lambda_request"],
            "Lambda GB-seconds": self.gb_seconds * PRICES["lambda_gb_second"],
            "DynamoDB reads": self.rru * PRICES["dynamodb_rru"],
            "DynamoDB writes": self.wru * PRICES["dynamodb_wru"],
            "Step Functions Express requests": self.executions * PRICES["sfn_express_request"],
            "Step Functions Express GB-seconds": self.execution_gb_seconds
            * PRICES["sfn_express_gb_second"],
            "EventBridge events": self.events * PRICES["event"],
        }

    def total(self) -> float:
        return sum(self.cost().values())

    def scaled(self, factor: float) -> Usage:
        return Usage(
            api_requests=round(self.api_requests * factor),
            invocations=Counter({k: round(v * factor) for k, v in self.invocations.items()}),
            gb_seconds=self.gb_seconds * factor,
            rru=self.rru * factor,
            wru=self.wru * factor,
            executions=round(self.executions * factor),
            execution_gb_seconds=self.execution_gb_seconds * factor,
            events=round(self.events * factor),
        )

    def minus(self, other: Usage) -> Usage:
        return Usage(
            api_requests=self.api_requests - other.api_requests,
            invocations=self.invocations - other.invocations,
            gb_seconds=max(0.0, self.gb_seconds - other.gb_seconds),
            rru=max(0.0, self.rru - other.rru),
            wru=max(0.0, self.wru - other.wru),
            executions=self.executions - other.executions,
            execution_gb_seconds=max(0.0, self.execution_gb_seconds - other.execution_gb_seconds),
            events=self.events - other.events,
        )

    def describe(self) -> str:
        invocations = ", ".join(f"{n} {k}" for k, n in sorted(self.invocations.items()))
        return (
            f"{self.api_requests} API requests; Lambda {invocations or 'none'} "
            f"({self.gb_seconds:.3f} GB-s); DynamoDB {self.rru:.1f} RRU, {self.wru:.1f} WRU; "
            f"{self.executions} Express executions ({self.execution_gb_seconds:.3f} GB-s); "
            f"{self.events} events"
        )


def route_of(event: dict[str, Any]) -> str:
    """``METHOD /v1/...`` with ids replaced by their kind."""
    parts = ["{id}" if p.startswith("c-") else p for p in event["rawPath"].split("/")]
    return f"{event['requestContext']['http']['method']} {'/'.join(parts)}"


def item_bytes(item: dict[str, Any]) -> int:
    """A DynamoDB item's size, near enough: attribute names plus values, as JSON."""
    return sum(len(name) + len(json.dumps(value, default=_blob)) for name, value in item.items())


def _blob(value: Any) -> str:
    return "b" * len(value)  # a binary attribute: its length


def read_units(size: int, consistent: bool) -> float:
    return math.ceil(max(size, 1) / 4096) * (1.0 if consistent else 0.5)


def write_units(size: int) -> float:
    return float(math.ceil(max(size, 1) / 1024))


class Meter:
    """Counts what the handlers make AWS do. Only calls made while a handler runs (on
    that thread) are counted: the harness's own calls are not the control plane's."""

    def __init__(self, memory_mb: int) -> None:
        self.memory_gb = memory_mb / 1024
        self.usage = Usage()
        self._inside = threading.local()
        self._lock = threading.Lock()
        self._original = botocore.client.BaseClient._make_api_call
        meter = self

        def counted_call(client: Any, operation: str, params: dict[str, Any]) -> Any:
            response = meter._original(client, operation, params)
            if getattr(meter._inside, "name", None):
                service = client.meta.service_model.service_name
                with meter._lock:
                    meter._account(service, operation, params, response)
            return response

        botocore.client.BaseClient._make_api_call = counted_call  # type: ignore[method-assign]

    def close(self) -> None:
        botocore.client.BaseClient._make_api_call = self._original  # type: ignore[method-assign]

    def handler(self, name: str, function: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        """``function`` as a metered Lambda function called ``name``."""

        def invoke(event: Any, context: Any) -> Any:
            self._inside.name = name
            start = time.perf_counter()
            try:
                return function(event, context)
            finally:
                elapsed = time.perf_counter() - start
                self._inside.name = None
                with self._lock:
                    if name == "api":
                        self.usage.routes[route_of(event)] += 1
                    self.usage.invocations[name] += 1
                    self.usage.api_requests += name == "api"
                    # Lambda bills each invocation by the millisecond, rounded up.
                    self.usage.gb_seconds += math.ceil(elapsed * 1000) / 1000 * self.memory_gb

        return invoke

    @contextmanager
    def phase(self) -> Iterator[Usage]:
        """The usage of what runs inside the block (a fresh ``Usage`` filled at exit)."""
        before = self._snapshot()
        measured = Usage()
        yield measured
        after = self._snapshot()
        diff = after.minus(before)
        measured.__dict__.update(diff.__dict__)
        measured.calls = after.calls - before.calls
        measured.routes = after.routes - before.routes

    def _snapshot(self) -> Usage:
        with self._lock:
            u = self.usage
            return Usage(
                u.api_requests, Counter(u.invocations), u.gb_seconds, u.rru, u.wru,
                u.executions, u.execution_gb_seconds, u.events, Counter(u.calls),
                Counter(u.routes),
            )  # fmt: skip

    def _account(self, service: str, op: str, params: dict, response: dict) -> None:
        u = self.usage
        u.calls[f"{service}.{op}"] += 1
        if service == "events" and op == "PutEvents":
            u.events += len(params.get("Entries", []))
        if service != "dynamodb":
            return
        consistent = bool(params.get("ConsistentRead"))
        if op == "GetItem":
            u.rru += read_units(item_bytes(response.get("Item", {})), consistent)
        elif op in ("Query", "Scan"):
            size = sum(item_bytes(i) for i in response.get("Items", []))
            u.rru += read_units(size, consistent)
        elif op == "BatchGetItem":
            for table, keys in params.get("RequestItems", {}).items():
                strong = bool(keys.get("ConsistentRead"))
                for item in response.get("Responses", {}).get(table, []):
                    u.rru += read_units(item_bytes(item), strong)
        elif op == "TransactGetItems":
            for item in response.get("Responses", []):
                u.rru += 2 * read_units(item_bytes(item.get("Item", {})), True)
        elif op in ("PutItem", "UpdateItem", "DeleteItem"):
            u.wru += write_units(item_bytes(params.get("Item") or params.get("Key", {})))
        elif op == "TransactWriteItems":
            for entry in params.get("TransactItems", []):
                action = next(iter(entry.values()))
                u.wru += 2 * write_units(item_bytes(action.get("Item") or action.get("Key", {})))
        elif op == "BatchWriteItem":
            for requests in params.get("RequestItems", {}).values():
                for request in requests:
                    put = request.get("PutRequest", {}).get("Item")
                    u.wru += write_units(item_bytes(put or {}))


EXPRESS_MEMORY_GB = 64 / 1024  # Express bills memory in 64 MB steps; the loop's state is tiny


@dataclass
class Loops:
    """A cluster's Express executions as moto reports them: how many, and their billed
    duration in seconds (each rounded up to 100 ms)."""

    count: int
    seconds: float

    def usage(self) -> Usage:
        return Usage(executions=self.count, execution_gb_seconds=self.seconds * EXPRESS_MEMORY_GB)

    def minus(self, other: Loops) -> Loops:
        return Loops(self.count - other.count, self.seconds - other.seconds)


def express_loops(sfn: Any, machine_arn: str, cluster_id: str) -> Loops:
    """The cluster's finished executions and their durations, start to stop."""
    count, seconds = 0, 0.0
    wait_until(lambda: not _of(sfn, machine_arn, cluster_id, "RUNNING"), 60, "the loops to finish")
    for execution in _of(sfn, machine_arn, cluster_id):
        count += 1
        elapsed = (execution["stopDate"] - execution["startDate"]).total_seconds()
        seconds += math.ceil(elapsed * 10) / 10
    return Loops(count, seconds)


def _of(sfn: Any, machine_arn: str, cluster_id: str, status: str | None = None) -> list[dict]:
    kwargs = {"statusFilter": status} if status else {}
    found = sfn.list_executions(stateMachineArn=machine_arn, **kwargs)["executions"]
    return [e for e in found if e["name"].startswith(f"{cluster_id}-")]


def serverless_settings() -> tuple[int, float]:
    """The API function's memory size (MB) and the reaper's period (s), from serverless.yml."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    doc = yaml.load((ROOT / "serverless.yml").read_text(), Loader=Loader)
    memory = int(doc["provider"]["memorySize"])
    [rate] = [e["schedule"] for e in doc["functions"]["reaper"]["events"]]
    amount, unit = rate.removeprefix("rate(").removesuffix(")").split()
    seconds = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600}[unit]
    return memory, float(amount) * seconds


def main() -> int:
    import functions.aws as aws

    from tests.support.aws import (
        ApiGateway,
        Deployment,
        InstanceKit,
        InstanceRunner,
        TaskPoller,
        client,
        functions_env,
    )

    memory_mb, reaper_period = serverless_settings()
    meter = Meter(memory_mb)
    root = Path(tempfile.mkdtemp(prefix="billow-bench-cost-"))
    try:
        with moto_server(root / "moto", serial=True) as url:
            httpx.post(
                f"{url}/moto-api/config", json={"stepfunctions": {"execute_state_machine": True}}
            ).raise_for_status()
            gateway = ApiGateway(meter.handler("api", aws.api_handler)).start()
            kit = InstanceKit.build(root / "kit")
            deployment = Deployment.create(url, gateway.url, machine="lifecycle", kit=kit)
            env = {
                **deployment.env,
                "BILLOW_HEARTBEAT_INTERVAL": "5",  # the shipped settings, but the window's
                "BILLOW_RECONCILE_INTERVAL": "0.5",
                "BILLOW_HEARTBEAT_STEADY_INTERVAL": str(STEADY_INTERVAL),
                "POWERTOOLS_LOG_LEVEL": "WARNING",
            }
            reaper = meter.handler("reaper", aws.reaper_handler)
            with functions_env(env) as rt:
                _, token = rt.plane.create_user("bench", is_admin=True)
                reconcile = meter.handler("reconcile", aws.reconcile_handler)
                poller = TaskPoller(url, deployment.queue_url, reconcile).start()
                runner = InstanceRunner(url, deployment.name, root / "instances", kit).start()
                sfn = client(url, "stepfunctions")
                try:
                    usage = run_cluster(
                        meter,
                        gateway.url,
                        token,
                        reaper,
                        lambda cid: express_loops(sfn, deployment.state_machine_arn, cid),
                    )
                finally:
                    runner.stop()
                    poller.stop()
                    gateway.stop()
                    deployment.delete()
    finally:
        meter.close()
    report(usage, reaper_period, memory_mb)
    return 0


def run_cluster(
    meter: Meter, url: str, token: str, reaper: Callable, loops: Callable[[str], Loops]
) -> dict[str, Any]:
    """Start, hold, reap and stop one cluster; the usage of each phase."""
    with meter.phase() as idle_pass:
        reaper({"source": "aws.events"}, REAPER_CONTEXT)
    with meter.phase() as start:
        cluster = billow.Cluster(
            n_workers=2, name="cost", server=url, token=token, show_progress=False, timeout=180
        )
    assert cluster.cluster_id is not None
    start_loops = loops(cluster.cluster_id)
    _add(start, start_loops.usage())
    try:
        with meter.phase() as steady:
            time.sleep(STEADY_WINDOW)
        with meter.phase() as busy_pass:  # the first to see it: opens usage records
            reaper({"source": "aws.events"}, REAPER_CONTEXT)
        with meter.phase() as later_pass:  # as most passes of an hour: reads only
            reaper({"source": "aws.events"}, REAPER_CONTEXT)
    finally:
        with meter.phase() as stop:
            cluster.close()
            wait_until(lambda: cluster.record.get("status") == "stopped", 120, "stopped")
    stop_loops = loops(cluster.cluster_id).minus(start_loops)
    _add(stop, stop_loops.usage())
    return {
        "start_loops": start_loops,
        "stop_loops": stop_loops,
        "start": start,
        "steady": steady,
        "idle_pass": idle_pass,
        "busy_pass": busy_pass,
        "later_pass": later_pass,
        "stop": stop,
    }


def _add(phase: Usage, loops: Usage) -> None:
    phase.executions += loops.executions
    phase.execution_gb_seconds += loops.execution_gb_seconds


def express_cost(count: int, seconds: float) -> float:
    return (
        count * PRICES["sfn_express_request"]
        + seconds * EXPRESS_MEMORY_GB * PRICES["sfn_express_gb_second"]
    )


def report(usage: dict[str, Any], reaper_period: float, memory_mb: int) -> None:
    start, stop, steady = usage["start"], usage["stop"], usage["steady"]
    beats = steady.invocations["api"]
    per_beat = steady.scaled(1 / max(beats, 1))
    beats_per_hour = 3600 / SHIPPED_STEADY_INTERVAL
    passes_per_hour = 3600 / reaper_period
    first_share = usage["busy_pass"].minus(usage["idle_pass"])
    later_share = usage["later_pass"].minus(usage["idle_pass"])
    # A usage record is rewritten when its last-seen time is SEEN_REFRESH passes old: of
    # an hour's passes, that many write as the first one did, the others only read.
    writing = passes_per_hour / SEEN_REFRESH
    hour = per_beat.scaled(beats_per_hour)
    hour_reaper = writing * first_share.total() + (passes_per_hour - writing) * later_share.total()
    print(
        f"control-plane cost on AWS, list prices (us-east-1), Lambda {memory_mb} MB x86, "
        f"reaper every {reaper_period:.0f} s"
    )
    for name, u in (("start (create to ready)", start), ("stop (close to stopped)", stop)):
        print(f"  {name}: {u.describe()}")
        print(f"    requests: {', '.join(f'{n} {r}' for r, n in u.routes.most_common())}")
        print(f"    = ${u.total():.6f}  ({_terms(u)})")
    print(
        f"  steady: {beats} heartbeats in {STEADY_WINDOW:.0f} s at a {STEADY_INTERVAL:g} s "
        f"interval; one heartbeat: {per_beat.describe()} = ${per_beat.total():.8f}"
    )
    print(
        f"    an hour at the shipped {SHIPPED_STEADY_INTERVAL:.0f} s interval: "
        f"{beats_per_hour:.0f} x ${per_beat.total():.8f} = ${hour.total():.6f}"
    )
    print(
        f"  reaper, this cluster's share of a pass: {first_share.describe()} when it "
        f"writes usage records (the first pass, then every {SEEN_REFRESH}th), else "
        f"{later_share.describe()}; {passes_per_hour:.0f} passes an hour: "
        f"{writing:.0f} x ${first_share.total():.8f} + {passes_per_hour - writing:.0f} x "
        f"${later_share.total():.8f} = ${hour_reaper:.7f}"
    )
    steady_hour = hour.total() + hour_reaper
    once = start.total() + stop.total()
    print(f"  per cluster-hour, steady: ${steady_hour:.6f}")
    for hours in (1, 8):
        total = once / hours + steady_hour
        verdict = "met" if total <= GOAL_PER_CLUSTER_HOUR else "NOT met"
        print(
            f"  per cluster-hour, a {hours} h cluster: (${once:.6f} start+stop) / {hours} + "
            f"${steady_hour:.6f} = ${total:.6f}; ratio to goal "
            f"{total / GOAL_PER_CLUSTER_HOUR:.2f}x  (goal <= ${GOAL_PER_CLUSTER_HOUR}: {verdict})"
        )
    start_loops, stop_loops = usage["start_loops"], usage["stop_loops"]
    print(
        f"  Express loops as moto ran them: start {start_loops.count} execution(s), "
        f"{start_loops.seconds:.1f} s; stop {stop_loops.count}, {stop_loops.seconds:.1f} s"
    )
    real = express_cost(1, REAL_START_SECONDS)
    measured = express_cost(start_loops.count, start_loops.seconds)
    steps_here = start.invocations["reconcile"]
    extra_steps = max(0.0, REAL_START_SECONDS / SHIPPED_RECONCILE_INTERVAL - steps_here)
    per_step = _per_reconcile(start)
    swapped = once - measured + real
    print(
        f"    moto's loop is not EC2's: instances here boot in seconds on this machine, the "
        f"loop polls every 0.5 s and moto never stops an execution at 5 minutes. The loop "
        f"of a real {REAL_START_SECONDS:.0f} s start is one execution of "
        f"{REAL_START_SECONDS:.0f} s at 64 MB = ${real:.7f} (here ${measured:.7f})"
    )
    looks_here = start.routes["GET /v1/clusters/{id}"]
    extra_looks = max(0.0, REAL_START_SECONDS / SHIPPED_POLL_INTERVAL - looks_here)
    per_look = per_beat.total()  # one API request as a heartbeat is (it writes: a bound)
    with_steps = swapped + extra_steps * per_step
    for label, total in (
        ("that loop alone", swapped + steady_hour),
        (
            f"that loop and ~{extra_steps:.0f} more reconcile steps (one per "
            f"{SHIPPED_RECONCILE_INTERVAL:.0f} s, ~${per_step:.7f} each here)",
            with_steps + steady_hour,
        ),
        (
            f"those and ~{extra_looks:.0f} more looks of the SDK (one per "
            f"{SHIPPED_POLL_INTERVAL:.0f} s, at most ${per_look:.7f} each, a heartbeat's cost)",
            with_steps + extra_looks * per_look + steady_hour,
        ),
    ):
        print(
            f"    a 1 h cluster with {label}: ${total:.6f}; ratio to goal "
            f"{total / GOAL_PER_CLUSTER_HOUR:.2f}x"
        )
    print(
        "    (waiting workers are not added: on EC2 they boot alongside their scheduler and "
        "wait for its Dask start, a few seconds, as here)"
    )
    idle = usage["idle_pass"]
    month = idle.scaled(30 * 86400 / reaper_period)
    print(
        f"  idle deployment: one reaper pass {idle.describe()} = ${idle.total():.8f}; "
        f"a 30-day month: ${month.total():.4f}"
    )
    print(
        "  for scale: Coiled charges $0.05 per CPU-hour; a 3 x 2-vCPU cluster-hour is 6 "
        "CPU-hours = $0.30"
    )


def _per_reconcile(u: Usage) -> float:
    """What one reconcile step costs, roughly: the phase's Lambda and DynamoDB cost per
    invocation, API requests and reconcile steps alike (no per-function split is kept)."""
    calls = sum(u.invocations.values()) or 1
    lambda_cost = u.cost()["Lambda requests"] + u.cost()["Lambda GB-seconds"]
    dynamo = u.cost()["DynamoDB reads"] + u.cost()["DynamoDB writes"]
    return (lambda_cost + dynamo) / calls


def _terms(u: Usage) -> str:
    return ", ".join(f"{k} ${v:.6f}" for k, v in u.cost().items() if v)


if __name__ == "__main__":
    sys.exit(main())
