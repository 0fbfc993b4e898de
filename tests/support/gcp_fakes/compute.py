"""A loopback fake of the few Compute Engine REST calls ``adapters/gcp/compute`` makes,
served to ``google.cloud.compute_v1`` clients through ``api_endpoint``:

* ``machineTypes.list`` of a fixed table (``MACHINE_TYPES``: e2, n2, n1, shared-core, and
  GPU types that come with their accelerators);
* ``instanceTemplates`` and ``firewalls``: insert, get, list (``name eq "<regex>"``),
  delete;
* ``instances.bulkInsert`` (the body parsed as ``BulkInsertInstanceResource``; the
  instance is the template's properties merge-patched with ``instanceProperties``, parsed
  as ``Instance``), ``get``, ``list`` (filters ``(labels.<k> = "<v>") AND ...``),
  ``delete``; a repeated ``requestId`` answers the first operation and creates nothing;
* operations: every answer is a DONE ``Operation``; ``get`` and ``wait`` serve them again.

With ``refuse_spot`` a SPOT bulkInsert fails with ``ZONE_RESOURCE_POOL_EXHAUSTED`` (503),
as GCE reports no spot capacity: in the operation (``"operation"``) or as the request's
HTTP answer (``"request"``). Given an ``InstanceKit``, each new instance boots: its
metadata ``startup-script`` runs through the shared harness (``tests/support/instances``),
the instance is RUNNING while the script runs and TERMINATED (stopped) once it ends, as
its ``shutdown -h now`` would; deleting an instance stops its process group by PID
(SIGTERM, then SIGKILL after ``grace``). Given a Logging fake, the fake plays the Ops Agent
the script configures: new lines of the configured file go to the configured log through
``entries:write`` (each line as ``jsonPayload.message``), labelled as the script's
processor says plus ``compute.googleapis.com/resource_name``.

Not modelled: regions other than the one zone, quotas, machine-type validation against
the zone, IAM, networks and subnetworks (rules are stored, never enforced), operation
progress (everything is DONE at once), PROVISIONING/STAGING, preemption, pagination (one
page), and filters beyond the two forms above.
"""

from __future__ import annotations

import copy
import itertools
import re
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from google.cloud import compute_v1

from tests.support.gcp_fakes.server import FakeServer, HttpError, parse, to_dict
from tests.support.instances import InstanceKit, RunningInstance, boot_script, stop_instances

# (name, CPUs, memory MiB, shared core, bundled accelerators)
MACHINE_TYPES: list[tuple[str, int, int, bool, list[tuple[str, int]]]] = [
    ("e2-micro", 2, 1024, True, []),
    ("e2-small", 2, 2048, True, []),
    ("e2-standard-2", 2, 8192, False, []),
    ("e2-standard-4", 4, 16384, False, []),
    ("e2-standard-8", 8, 32768, False, []),
    ("e2-standard-16", 16, 65536, False, []),
    ("e2-standard-32", 32, 131072, False, []),
    ("e2-highmem-2", 2, 16384, False, []),
    ("e2-highmem-16", 16, 131072, False, []),
    ("n2-standard-2", 2, 8192, False, []),
    ("n2-standard-64", 64, 262144, False, []),
    ("n2-highmem-32", 32, 262144, False, []),
    ("n1-standard-1", 1, 3840, False, []),
    ("n1-standard-4", 4, 15360, False, []),
    ("n1-standard-16", 16, 61440, False, []),
    ("a2-highgpu-1g", 12, 87040, False, [("nvidia-tesla-a100", 1)]),
    ("g2-standard-4", 4, 16384, False, [("nvidia-l4", 1)]),
]
CAPACITY_ERROR = "ZONE_RESOURCE_POOL_EXHAUSTED"
_TERM = re.compile(r'\(?\s*([A-Za-z0-9_.-]+)\s*=\s*"([^"]*)"\s*\)?')
_REGEX = re.compile(r'^(\w+) eq "(.*)"$')


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396, as bulkInsert applies ``instanceProperties`` over a template."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def matches(resource: dict[str, Any], expression: str | None) -> bool:
    """Whether ``resource`` passes a list ``filter`` of the two supported forms; any
    other expression is a 400 (so an adapter's malformed filter fails its test)."""
    if not expression:
        return True
    regex = _REGEX.match(expression.strip())
    if regex:
        return re.fullmatch(regex.group(2), str(resource.get(regex.group(1), ""))) is not None
    terms = [t.strip() for t in expression.split(" AND ")]
    for term in terms:
        found = _TERM.fullmatch(term)
        if found is None:
            raise HttpError(400, f"unsupported filter term {term!r}")
        value: Any = resource
        for part in found.group(1).split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value != found.group(2):
            return False
    return True


class ComputeFake:
    """One project and zone of Compute Engine; see the module docstring."""

    def __init__(
        self,
        project: str,
        zone: str,
        *,
        kit: InstanceKit | None = None,
        workdir: Path | None = None,
        logging_url: str | None = None,
        grace: float = 5.0,
    ) -> None:
        self.project, self.zone = project, zone
        self.kit, self.workdir, self.logging_url, self.grace = kit, workdir, logging_url, grace
        self.refuse_spot: str | None = None  # "operation" or "request": how to refuse
        self.instances: dict[str, dict[str, Any]] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.firewalls: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.by_request_id: dict[str, dict[str, Any]] = {}
        self.bulk_inserts = 0
        self.booted: dict[str, RunningInstance] = {}
        self.log_labels: dict[str, dict[str, str]] = {}  # the script's Ops Agent labels
        self.errors: list[str] = []
        self._deleted: list[tuple[RunningInstance, float]] = []
        self._ids = itertools.count(4_000_000_001)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gce-fake", daemon=True)
        base = "/compute/v1/projects/(?P<project>[^/]+)"
        zone_base = f"{base}/zones/(?P<zone>[^/]+)"
        self.server = FakeServer(
            [
                ("GET", f"{zone_base}/machineTypes", self._machine_types),
                ("POST", f"{zone_base}/instances/bulkInsert", self._bulk_insert),
                ("GET", f"{zone_base}/instances", self._list_instances),
                ("GET", f"{zone_base}/instances/(?P<name>[^/]+)", self._get_instance),
                ("DELETE", f"{zone_base}/instances/(?P<name>[^/]+)", self._delete_instance),
                ("GET", f"{zone_base}/operations/(?P<op>[^/]+)", self._get_operation),
                ("POST", f"{zone_base}/operations/(?P<op>[^/]+)/wait", self._get_operation),
                ("GET", f"{base}/global/operations/(?P<op>[^/]+)", self._get_operation),
                ("POST", f"{base}/global/operations/(?P<op>[^/]+)/wait", self._get_operation),
                *self._collection("instanceTemplates", compute_v1.InstanceTemplate),
                *self._collection("firewalls", compute_v1.Firewall),
            ]
        )
        self.url = self.server.url

    def start(self) -> ComputeFake:
        self.server.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, then every instance's processes (SIGTERM, SIGKILL after grace)."""
        self._stop.set()
        self._thread.join(30)
        self.server.stop()
        stop_instances(list(self.booted.values()), self.grace)

    def live_pids(self) -> list[int]:
        return [i.proc.pid for i in self.booted.values() if i.alive()]

    # -- operations ------------------------------------------------------------------

    def _operation(
        self, kind: str, target: str, zonal: bool, error: tuple[int, str, str] | None = None
    ) -> dict[str, Any]:
        op_id = next(self._ids)
        name = f"operation-{op_id}"
        where = f"zones/{self.zone}" if zonal else "global"
        link = f"{self.url}/compute/v1/projects/{self.project}/{where}"
        op: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(op_id),
            "name": name,
            "operationType": kind,
            "targetLink": f"{link}/{target}",
            "status": "DONE",
            "progress": 100,
            "insertTime": _now(),
            "endTime": _now(),
            "selfLink": f"{link}/operations/{name}",
        }
        if zonal:
            op["zone"] = f"{self.url}/compute/v1/projects/{self.project}/zones/{self.zone}"
        if error is not None:
            status, code, message = error
            op["error"] = {"errors": [{"code": code, "message": message}]}
            op["httpErrorStatusCode"] = status
            op["httpErrorMessage"] = message
        parse(compute_v1.Operation, op)  # what we answer is a real operation
        self.operations[name] = op
        return op

    def _get_operation(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        self._check(p)
        if p["op"] not in self.operations:
            raise HttpError(404, f"operation {p['op']} not found")
        return 200, self.operations[p["op"]]

    def _check(self, p: dict[str, str]) -> None:
        if p.get("project") != self.project or p.get("zone", self.zone) != self.zone:
            raise HttpError(404, f"unknown project or zone {p}")

    # -- machine types, templates, firewalls -------------------------------------------

    def _machine_types(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        self._check(p)
        items = []
        for name, cpus, memory, shared, accelerators in MACHINE_TYPES:
            item: dict[str, Any] = {
                "name": name,
                "guestCpus": cpus,
                "memoryMb": memory,
                "isSharedCpu": shared,
                "zone": self.zone,
            }
            if accelerators:
                item["accelerators"] = [
                    {"guestAcceleratorType": k, "guestAcceleratorCount": n} for k, n in accelerators
                ]
            items.append(to_dict(parse(compute_v1.MachineType, item)))
        return 200, {"kind": "compute#machineTypeList", "items": items}

    def _collection(self, kind: str, proto: Any) -> list[tuple[str, str, Any]]:
        store: dict[str, dict[str, Any]] = getattr(
            self, kind if kind != "instanceTemplates" else "templates"
        )
        path = f"/compute/v1/projects/(?P<project>[^/]+)/global/{kind}"

        def insert(p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
            self._check(p)
            resource = to_dict(parse(proto, body))
            with self._lock:
                if q.get("requestId") in self.by_request_id:
                    return 200, self.by_request_id[q["requestId"]]
                if resource["name"] in store:
                    raise HttpError(409, f"{kind} {resource['name']} already exists")
                resource |= {"id": str(next(self._ids)), "creationTimestamp": _now()}
                resource["selfLink"] = (
                    f"{self.url}{path.split('(')[0]}{p['project']}/global/{kind}/{resource['name']}"
                )
                store[resource["name"]] = resource
                op = self._operation("insert", f"{kind}/{resource['name']}", zonal=False)
                if q.get("requestId"):
                    self.by_request_id[q["requestId"]] = op
            return 200, op

        def listing(p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
            self._check(p)
            with self._lock:
                items = [r for r in store.values() if matches(r, q.get("filter"))]
            return 200, {"items": items}

        def get(p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
            self._check(p)
            if p["name"] not in store:
                raise HttpError(404, f"{kind} {p['name']} not found")
            return 200, store[p["name"]]

        def delete(p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
            self._check(p)
            with self._lock:
                if store.pop(p["name"], None) is None:
                    raise HttpError(404, f"{kind} {p['name']} not found")
                return 200, self._operation("delete", f"{kind}/{p['name']}", zonal=False)

        return [
            ("POST", path, insert),
            ("GET", path, listing),
            ("GET", f"{path}/(?P<name>[^/]+)", get),
            ("DELETE", f"{path}/(?P<name>[^/]+)", delete),
        ]

    # -- instances -------------------------------------------------------------------

    def _bulk_insert(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        self._check(p)
        request = to_dict(parse(compute_v1.BulkInsertInstanceResource, body))
        with self._lock:
            self.bulk_inserts += 1
            if q.get("requestId") in self.by_request_id:
                return 200, self.by_request_id[q["requestId"]]
            op = self._insert(request)
            if q.get("requestId"):
                self.by_request_id[q["requestId"]] = op
        return 200, op

    def _insert(self, request: dict[str, Any]) -> dict[str, Any]:
        names = list(request.get("perInstanceProperties", {}))
        if int(request.get("count", 0)) != len(names) or not names:
            raise HttpError(400, "this fake needs count == len(perInstanceProperties) > 0")
        source = request.get("sourceInstanceTemplate", "")
        template = self.templates.get(source.rsplit("/", 1)[-1])
        if source and template is None:
            raise HttpError(404, f"instance template {source} not found")
        properties = merge_patch(
            (template or {}).get("properties", {}), request.get("instanceProperties", {})
        )
        model = properties.get("scheduling", {}).get("provisioningModel", "STANDARD")
        if model == "SPOT" and self.refuse_spot == "request":
            raise HttpError(503, f"no SPOT capacity in {self.zone}", CAPACITY_ERROR)
        if model == "SPOT" and self.refuse_spot:
            return self._operation(
                "bulkInsert",
                "instances",
                zonal=True,
                error=(503, CAPACITY_ERROR, f"no SPOT capacity in {self.zone}"),
            )
        taken = [n for n in names if n in self.instances]
        if taken:
            return self._operation(
                "bulkInsert",
                "instances",
                zonal=True,
                error=(409, "RESOURCE_ALREADY_EXISTS", f"instance {taken[0]} already exists"),
            )
        zone_url = f"{self.url}/compute/v1/projects/{self.project}/zones/{self.zone}"
        for name in names:
            instance = {
                **copy.deepcopy(properties),
                "name": name,
                "id": str(next(self._ids)),
                "zone": zone_url,
                "status": "RUNNING",
                "creationTimestamp": _now(),
                "machineType": f"{zone_url}/machineTypes/{properties.get('machineType', '')}",
                "selfLink": f"{zone_url}/instances/{name}",
            }
            for interface in instance.get("networkInterfaces", []):
                interface["networkIP"] = "127.0.0.1"
            self.instances[name] = to_dict(parse(compute_v1.Instance, instance))
            if self.kit is not None:
                self._boot(name, instance)
        return self._operation("bulkInsert", "instances", zonal=True)

    def _list_instances(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        self._check(p)
        with self._lock:
            items = [i for i in self.instances.values() if matches(i, q.get("filter"))]
        return 200, {"kind": "compute#instanceList", "items": items}

    def _get_instance(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        self._check(p)
        if p["name"] not in self.instances:
            raise HttpError(404, f"instance {p['name']} not found")
        return 200, self.instances[p["name"]]

    def _delete_instance(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        self._check(p)
        with self._lock:
            if self.instances.pop(p["name"], None) is None:
                raise HttpError(404, f"instance {p['name']} not found")
            booted = self.booted.get(p["name"])
            if booted is not None and booted.alive():
                booted.signal(15)
                self._deleted.append((booted, time.monotonic()))
            return 200, self._operation("delete", f"instances/{p['name']}", zonal=True)

    # -- booting, and the Ops Agent ----------------------------------------------------

    def _boot(self, name: str, instance: dict[str, Any]) -> None:
        items = instance.get("metadata", {}).get("items", [])
        script = next((i["value"] for i in items if i["key"] == "startup-script"), "")
        if not script.startswith("#!/bin/bash") or "/v1/agent/kit" not in script:
            raise HttpError(400, f"{name}: startup-script is not Billow's bootstrap")
        assert self.kit is not None and self.workdir is not None
        path = re.search(r"include_paths: \[([^\]]+)\]", script)
        booted = boot_script(
            self.kit,
            self.workdir / name,
            name,
            script,
            path.group(1) if path else "/var/log/billow-agent.log",
        )
        receivers = re.search(r"receivers: \[([^\]]+)\]", script)
        booted.log_group = receivers.group(1) if receivers else ""
        labels = re.findall(r'labels\."([^"]+)":\n\s+static_value: (\S+)', script)
        self.log_labels[name] = dict(labels)
        self.booted[name] = booted

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._poll()
            except Exception:
                self.errors.append(traceback.format_exc())

    def _poll(self) -> None:
        for name, booted in list(self.booted.items()):
            self._ship(name, booted)
            with self._lock:
                instance = self.instances.get(name)
                if instance is not None and instance["status"] == "RUNNING" and not booted.alive():
                    instance["status"] = "TERMINATED"  # the script's shutdown -h now
        for booted, since in list(self._deleted):
            if not booted.alive():
                self._deleted.remove((booted, since))
            elif time.monotonic() - since > self.grace:
                booted.signal(9)

    def _ship(self, name: str, booted: RunningInstance) -> None:
        """What the Ops Agent does: new lines of the file to the log, via entries:write."""
        if self.logging_url is None or not booted.log_group:
            return
        lines = booted.new_lines()
        if not lines:
            return
        labels = {**self.log_labels[name], "compute.googleapis.com/resource_name": name}
        instance = self.instances.get(name, {})
        body = {
            "logName": f"projects/{self.project}/logs/{booted.log_group}",
            "resource": {
                "type": "gce_instance",
                "labels": {"instance_id": instance.get("id", ""), "zone": self.zone},
            },
            "labels": labels,
            "entries": [{"jsonPayload": {"message": line}, "timestamp": _now()} for line in lines],
        }
        httpx.post(f"{self.logging_url}/v2/entries:write", json=body, timeout=10).raise_for_status()
