"""Reading Billow's instances back from Compute Engine: label-filtered ``instances.list``
and ``instances.get``, each instance turned into an ``InstanceInfo``.

``InstanceInfo.id`` is the instance *name* (unique in the deployment's zone, and what
``get``/``delete`` take): ``instance_name`` derives it from the cluster id and Billow's
instance name, so a retried launch finds the instance it already started.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc

from ....core import tags as billow_tags
from ....core.models import InstanceInfo, InstanceRole, InstanceState
from .labels import BILLOW_LABELS, label_filter, tags_of_labels

PENDING = frozenset({"PROVISIONING", "STAGING", "REPAIRING"})
RUNNING = frozenset({"RUNNING"})
LIVE = PENDING | RUNNING  # everything else (STOPPING, TERMINATED, SUSPENDED...) is gone
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def instance_name(cluster_id: str, name: str) -> str:
    """The GCE name of Billow instance ``name`` of ``cluster_id``: ``billow-<cluster>-<name>``
    when that is a valid name of at most 63 characters, else the cluster and a digest."""
    candidate = f"billow-{cluster_id}-{name}"
    if _NAME.match(candidate):
        return candidate
    digest = hashlib.sha256(f"{cluster_id}\0{name}".encode()).hexdigest()[:12]
    return f"billow-{cluster_id}"[:50].rstrip("-") + f"-{digest}"


def state_of(status: str) -> InstanceState:
    if status in RUNNING:
        return InstanceState.running
    if status in PENDING:
        return InstanceState.pending
    return InstanceState.terminated


def instance_info(instance: Any) -> InstanceInfo | None:
    """The ``InstanceInfo`` of a ``compute_v1.Instance``, or ``None`` when it lacks a valid
    instance-name or role label (labelled by hand or by something else: not one of ours)."""
    tags = tags_of_labels(dict(instance.labels))
    name, role = tags.get(billow_tags.INSTANCE_NAME), tags.get(billow_tags.ROLE)
    if not name or role is None or role not in InstanceRole.__members__:
        return None
    created = instance.creation_timestamp
    launched = datetime.fromisoformat(created) if created else datetime.now(UTC)
    state = state_of(instance.status)
    stopped = instance.last_stop_timestamp
    scheduling = instance.scheduling
    return InstanceInfo(
        id=instance.name,
        cluster_id=tags.get(billow_tags.CLUSTER, ""),
        name=name,
        role=InstanceRole(role),
        state=state,
        tags=tags,
        launched_at=launched,
        # GCE's own stop time; none (deleted before it was read): the meter's last evidence
        terminated_at=datetime.fromisoformat(stopped)
        if stopped and state == InstanceState.terminated
        else None,
        machine_type=instance.machine_type.rsplit("/", 1)[-1] or None,
        gpus=sum(a.accelerator_count for a in instance.guest_accelerators),
        spot=scheduling.provisioning_model == "SPOT" or bool(scheduling.preemptible),
    )


class InstanceReader:
    """Lists and gets the deployment's instances in its zone."""

    def __init__(self, instances: Any, project: str, zone: str, deployment: str) -> None:
        self.client = instances
        self.project = project
        self.zone = zone
        self.deployment = deployment

    def matching(self, cluster_id: str | None = None, **labels: str) -> list[Any]:
        """Every ``compute_v1.Instance`` labelled with the deployment (and ``cluster_id``
        and ``labels``), across all pages. Raises ``GoogleAPICallError`` on refusal."""
        request = {
            "project": self.project,
            "zone": self.zone,
            "filter": label_filter(self.deployment, cluster_id, **labels),
        }
        return list(self.client.list(request=request))

    def infos(self, cluster_id: str | None = None) -> list[InstanceInfo]:
        """``instance_info`` of each listed instance that is one of Billow's, oldest first."""
        found = [i for i in map(instance_info, self.matching(cluster_id)) if i is not None]
        return sorted(found, key=lambda i: i.launched_at)

    def get(self, name: str) -> Any | None:
        """The deployment's instance called ``name``; ``None`` when there is none (or it
        belongs to another deployment)."""
        try:
            instance = self.client.get(project=self.project, zone=self.zone, instance=name)
        except gexc.NotFound:
            return None
        if instance.labels.get(BILLOW_LABELS[billow_tags.DEPLOYMENT]) != self.deployment:
            return None
        return instance
