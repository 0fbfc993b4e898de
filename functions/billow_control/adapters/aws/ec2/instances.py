"""Reading Billow's instances back from EC2: paging ``DescribeInstances`` and turning
each tagged instance into an ``InstanceInfo``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
    Shutting-down, stopping and stopped instances count as terminated."""
    tags = tags_of(instance)
    name, role = tags.get(billow_tags.INSTANCE_NAME), tags.get(billow_tags.ROLE)
    if not name or role is None or role not in InstanceRole.__members__:
        return None
    return InstanceInfo(
        id=instance["InstanceId"],
        cluster_id=tags.get(billow_tags.CLUSTER, ""),
        name=name,
        role=InstanceRole(role),
        state=_STATES.get(instance["State"]["Name"], InstanceState.terminated),
        tags=tags,
        launched_at=instance["LaunchTime"],
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
