"""Reading Billow's instances back from EC2: paging ``DescribeInstances`` and turning
each tagged instance into an ``InstanceInfo``."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from ....core import tags as billow_tags
from ....core.models import InstanceInfo, InstanceRole, InstanceSpec, InstanceState
from .tagging import tag_filters, tags_of

LIVE_STATES = ("pending", "running", "stopping", "stopped")
_STATES = {
    "pending": InstanceState.pending,
    "running": InstanceState.running,
    "shutting-down": InstanceState.terminated,
    "terminated": InstanceState.terminated,
    "stopping": InstanceState.terminated,
    "stopped": InstanceState.terminated,
}


_REASON_TIME = re.compile(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) GMT\)")


def transition_time(instance: Mapping[str, Any]) -> datetime | None:
    """When a stopped or terminated instance left ``running``: the time EC2 writes into
    ``StateTransitionReason`` (``"User initiated (2025-03-01 12:00:00 GMT)"``), or ``None``
    when the reason carries none (the meter then ends it at its last evidence of life)."""
    found = _REASON_TIME.search(instance.get("StateTransitionReason") or "")
    if found is None:
        return None
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def vcpus_of(instance: Mapping[str, Any]) -> int | None:
    cpu = instance.get("CpuOptions") or {}
    if "CoreCount" not in cpu:
        return None
    return int(cpu["CoreCount"]) * int(cpu.get("ThreadsPerCore", 1))


def instances(ec2: Any, filters: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every instance description matching ``filters``, across all pages.

    Raises ``botocore.exceptions.ClientError`` when EC2 refuses the call.
    """
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            yield from reservation["Instances"]


def instance_infos(ec2: Any, filters: list[dict[str, Any]]) -> list[InstanceInfo]:
    """``instance_info`` of every matching instance that is one of Billow's."""
    return [info for info in map(instance_info, instances(ec2, filters)) if info is not None]


def instance_info(instance: Mapping[str, Any]) -> InstanceInfo | None:
    """The ``InstanceInfo`` of an instance description, or ``None`` when it lacks a valid
    instance-name or role tag (tagged by hand or by something else: not one of ours).
    Shutting-down, stopping and stopped instances count as terminated; their
    ``terminated_at`` is ``transition_time``. GPUs are not in ``DescribeInstances``: 0."""
    tags = tags_of(instance)
    name, role = tags.get(billow_tags.INSTANCE_NAME), tags.get(billow_tags.ROLE)
    if not name or role is None or role not in InstanceRole.__members__:
        return None
    state = _STATES.get(instance["State"]["Name"], InstanceState.terminated)
    return InstanceInfo(
        id=instance["InstanceId"],
        cluster_id=tags.get(billow_tags.CLUSTER, ""),
        name=name,
        role=InstanceRole(role),
        state=state,
        tags=tags,
        launched_at=instance["LaunchTime"],
        terminated_at=transition_time(instance) if state == InstanceState.terminated else None,
        machine_type=instance.get("InstanceType"),
        vcpus=vcpus_of(instance),
        spot=instance.get("InstanceLifecycle") == "spot",
    )


def find_instance(ec2: Any, deployment: str, spec: InstanceSpec) -> InstanceInfo | None:
    """The instance already started for ``spec`` (same deployment, cluster and instance
    name, any state), preferring a live one, then the oldest; ``None`` if there is none."""
    found = instance_infos(
        ec2,
        tag_filters(deployment, spec.cluster_id, tags={billow_tags.INSTANCE_NAME: spec.name}),
    )
    found.sort(key=lambda i: (i.state == InstanceState.terminated, i.launched_at))
    return found[0] if found else None
