"""``GceProvider``: the ``Provider`` port on Compute Engine (instances, their cluster
resources and their Cloud Logging logs).

Every call is safe to repeat after a crash: instances have names derived from the cluster
and instance names, are labelled in their create call, and bulkInsert requests carry a
``requestId`` derived from the instance's ``client_token``; templates and firewall rules
are looked up by name first.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from ....core import tags as billow_tags
from ....core.models import InstanceInfo, InstanceSpec
from .instances import LIVE, InstanceReader, instance_info
from .labels import BILLOW_LABELS
from .launcher import Launcher, template_name
from .logs import InstanceLogs
from .machine_types import MachineType, MachineTypeCatalog
from .network import BILLOW_NAMES, OPERATION_TIMEOUT, Firewalls, cluster_tag
from .settings import GceSettings

log = logging.getLogger(__name__)
_CLUSTER = BILLOW_LABELS[billow_tags.CLUSTER]
_DEPLOYMENT = BILLOW_LABELS[billow_tags.DEPLOYMENT]


class GceProvider:
    """Implements ``billow_control.core.ports.Provider`` with Compute Engine.

    ``instances``, ``templates``, ``firewalls`` and ``machine_types`` are injected
    ``google.cloud.compute_v1`` clients, ``logging`` a ``google.cloud.logging.Client``.
    Google errors other than the "already exists / already gone" cases each method names
    are raised as ``GoogleAPICallError``; the reconciler retries them with backoff.
    """

    def __init__(
        self,
        *,
        instances: Any,
        templates: Any,
        firewalls: Any,
        machine_types: Any,
        logging: Any,
        settings: GceSettings,
    ) -> None:
        self.settings = settings
        self.instances = instances
        self.templates = templates
        self.reader = InstanceReader(
            instances, settings.project, settings.zone, settings.deployment
        )
        self.firewalls = Firewalls(firewalls, settings)
        self.catalog = MachineTypeCatalog(
            lambda zone: _machine_types(machine_types, settings.project, zone)
        )
        self.launcher = Launcher(
            instances, templates, self.reader, self.firewalls, self.catalog, settings
        )
        self.logs = InstanceLogs(logging, settings.project, settings.log_name, settings.deployment)

    def launch(self, spec: InstanceSpec) -> InstanceInfo:
        """Start ``spec``, or return the instance already started for it (see
        ``Launcher.launch``)."""
        return self.launcher.launch(spec)

    def describe(self, cluster_id: str) -> list[InstanceInfo]:
        """Every instance labelled with this cluster and deployment, oldest first, stopped
        ones (``TERMINATED``: the agent exited, or spot preemption) as terminated.

        Compute Engine forgets deleted instances at once (EC2 lists terminated ones for
        about an hour). When none of the cluster's instances is listed any more, the
        instances it had are read back from their first log line, as terminated, so
        ``billow cluster logs`` of a finished cluster still finds them (one Logging
        read; best effort). While any instance is listed, deleted ones are not shown."""
        listed = self.reader.infos(cluster_id)
        return listed or self.logs.gone_instances(cluster_id)

    def terminate(self, instance_ids: list[str]) -> None:
        """Delete those of ``instance_ids`` (instance names) that are this deployment's
        instances (one label-filtered list, then one delete each), in any state but
        ``STOPPING`` (being deleted already; a stopped one the sweep deletes); unknown and
        foreign names are ignored. Does not wait for the deletions; once a cluster has no
        live instance left, its template and firewall rule are deleted too
        (``cleanup_cluster``)."""
        wanted = set(instance_ids)
        clusters: set[str] = set()
        for instance in self.reader.matching() if wanted else []:
            if instance.name not in wanted:
                continue
            clusters.add(instance.labels.get(_CLUSTER, ""))
            if instance.status != "STOPPING":  # being deleted (or stopped) already
                self._delete(instance.name)
        for cluster_id in sorted(c for c in clusters if c):
            self.cleanup_cluster(cluster_id)

    def _delete(self, name: str) -> None:
        with contextlib.suppress(gexc.NotFound):
            self.instances.delete(
                project=self.settings.project, zone=self.settings.zone, instance=name
            )

    def cleanup_cluster(self, cluster_id: str) -> bool:
        """Delete the cluster's stopped instances, its instance template and its firewall
        rule, once none of its instances is live (provisioning, staging, running).

        Returns ``True`` when nothing is left, ``False`` to be called again later (an
        instance is alive, or a stopped one is still being deleted). The deployment's
        firewall rule is never deleted.
        """
        remaining = self.reader.matching(cluster_id)
        if any(i.status in LIVE for i in remaining):
            return False
        for instance in remaining:
            if instance.status != "STOPPING":
                self._delete(instance.name)
        with contextlib.suppress(gexc.NotFound):
            self.templates.delete(
                project=self.settings.project, instance_template=template_name(cluster_id)
            ).result(timeout=OPERATION_TIMEOUT)
        self.firewalls.delete(cluster_tag(cluster_id))
        return not self.reader.matching(cluster_id)  # deletions may still be under way

    def sweep_cluster_resources(self, is_active: Callable[[str], bool]) -> list[str]:
        """Run ``cleanup_cluster`` for every cluster of this deployment that still owns an
        instance template, a firewall rule or a stopped instance, and for which
        ``is_active(cluster_id)`` is false. Returns the ids of the clusters now fully
        cleaned up, sorted; the others are tried again on the next call."""
        clusters = set(self.firewalls.clusters().values())
        request = compute_v1.ListInstanceTemplatesRequest(
            project=self.settings.project, filter=BILLOW_NAMES
        )
        for template in self.templates.list(request=request):
            labels = template.properties.labels
            if labels.get(_DEPLOYMENT) == self.settings.deployment:
                clusters.add(labels.get(_CLUSTER, ""))
        for instance in self.reader.matching():
            if instance.status not in LIVE:
                clusters.add(instance.labels.get(_CLUSTER, ""))
        return [c for c in sorted(clusters - {""}) if not is_active(c) and self.cleanup_cluster(c)]

    def tail_logs(self, instance_id: str, lines: int = 50) -> list[str]:
        """The last ``lines`` lines the instance's agent logged to Cloud Logging, also after
        the instance is gone; ``[]`` when there are none (yet)."""
        return self.logs.tail(instance_id, lines)

    def list_deployment_instances(self) -> list[InstanceInfo]:
        """Live (provisioning, staging, running) instances labelled with this deployment."""
        live = [instance_info(i) for i in self.reader.matching() if i.status in LIVE]
        return [i for i in live if i is not None]


def _machine_types(client: Any, project: str, zone: str) -> list[MachineType]:
    return [
        MachineType(
            name=t.name,
            cpus=t.guest_cpus,
            memory_mb=t.memory_mb,
            shared_cpu=t.is_shared_cpu,
            deprecated=bool(t.deprecated.state) and t.deprecated.state != "ACTIVE",
            accelerators=tuple(
                (a.guest_accelerator_type, a.guest_accelerator_count) for a in t.accelerators
            ),
        )
        for t in client.list(project=project, zone=zone)
    ]
