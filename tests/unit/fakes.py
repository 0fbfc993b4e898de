"""In-memory provider and bus for pure unit tests of the core (not used elsewhere)."""

from __future__ import annotations

from billow_control.core.models import (
    ClusterRecord,
    InstanceInfo,
    InstanceSpec,
    InstanceState,
)
from billow_control.core.ports import Clock


class MemoryProvider:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.instances: dict[str, InstanceInfo] = {}
        self.by_token: dict[str, str] = {}
        self.specs: dict[str, InstanceSpec] = {}
        self.launches = 0
        self.logs: dict[str, list[str]] = {}
        self.refuse_role: tuple[str, Exception] | None = None  # (role, what launch raises)
        self.scheduler_listens_at: str | None = None  # a listen_address fixed at launch

    def launch(self, spec: InstanceSpec) -> InstanceInfo:
        if self.refuse_role is not None and spec.role.value == self.refuse_role[0]:
            raise self.refuse_role[1]
        if spec.client_token in self.by_token:
            return self.instances[self.by_token[spec.client_token]]
        self.launches += 1
        info = InstanceInfo(
            id=f"i-{len(self.instances)}",
            cluster_id=spec.cluster_id,
            name=spec.name,
            role=spec.role,
            state=InstanceState.running,
            tags=spec.tags,
            launched_at=self.clock.now(),
            listen_address=self.scheduler_listens_at if spec.role.value == "scheduler" else None,
        )
        self.instances[info.id] = info
        self.by_token[spec.client_token] = info.id
        self.specs[info.id] = spec
        return info

    def describe(self, cluster_id: str) -> list[InstanceInfo]:
        return [i for i in self.instances.values() if i.cluster_id == cluster_id]

    def terminate(self, instance_ids: list[str]) -> None:
        for instance_id in instance_ids:
            if instance_id in self.instances:
                self.exit(instance_id, None)

    def exit(self, instance_id: str, code: int | None) -> None:
        info = self.instances[instance_id]
        self.instances[instance_id] = info.model_copy(
            update={
                "state": InstanceState.terminated,
                "exit_code": code,
                "terminated_at": self.clock.now(),
            }
        )

    def tail_logs(self, instance_id: str, lines: int = 50) -> list[str]:
        return self.logs.get(instance_id, [])[-lines:]

    def list_deployment_instances(self) -> list[InstanceInfo]:
        return [i for i in self.instances.values() if i.state != InstanceState.terminated]

    def sweep_cluster_resources(self, is_active: object) -> list[str]:
        return []  # memory instances hold nothing besides themselves

    def live(self, cluster_id: str) -> list[InstanceInfo]:
        return [i for i in self.describe(cluster_id) if i.state != InstanceState.terminated]


class MemoryBus:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.usage_events: list[tuple[str, dict]] = []

    def publish(self, kind: str, cluster: ClusterRecord, detail: dict | None = None) -> None:
        self.events.append((kind, cluster.id))

    def publish_usage(self, kind: str, detail: dict) -> None:
        self.usage_events.append((kind, detail))


class RecordingOrchestrator:
    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, cluster_id: str) -> None:
        self.submitted.append(cluster_id)

    def running_clusters(self) -> set[str]:
        return set()  # records submits, drives nothing
