"""Firewall rules: one per deployment (instances of the deployment reach one another on
every TCP port: Dask workers and the scheduler talk on ports they pick, behind mutual TLS
with a per-cluster CA) and one per cluster (the scheduler and dashboard ports open to
``allowed_cidr``, for instances tagged with the cluster).

Firewall rules take no labels: each one's ``description`` holds its Billow labels as JSON
(``billow-deployment``, ``billow-cluster-id``), which the sweep reads back. Instances
carry the network tags ``deployment_tag`` and ``cluster_tag`` the rules target. Every rule
is looked up by name before it is created, and an "already exists" answer counts as done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from ....core import tags as billow_tags
from .labels import BILLOW_LABELS
from .settings import GceSettings

log = logging.getLogger(__name__)
BILLOW_NAMES = 'name eq "billow-.*"'  # a list filter: resources Billow names
OPERATION_TIMEOUT = 120.0  # seconds to wait for a firewall or template operation
_DEPLOYMENT = BILLOW_LABELS[billow_tags.DEPLOYMENT]
_CLUSTER = BILLOW_LABELS[billow_tags.CLUSTER]


def deployment_tag(deployment: str) -> str:
    """Network tag (and firewall rule name) of every instance of ``deployment``."""
    return f"billow-{deployment}"[:63].rstrip("-")


def cluster_tag(cluster_id: str) -> str:
    """Network tag (and firewall rule name) of the instances of one cluster."""
    return f"billow-{cluster_id}"[:63].rstrip("-")


def owner_labels(resource: Any) -> dict[str, str]:
    """The Billow labels a firewall rule's ``description`` holds (``{}`` if none)."""
    try:
        labels = json.loads(resource.description or "{}")
    except ValueError:
        return {}
    return (
        {k: v for k, v in labels.items() if isinstance(v, str)} if isinstance(labels, dict) else {}
    )


class Firewalls:
    """Finds or creates the deployment's and each cluster's firewall rule. Thread-safe."""

    def __init__(self, firewalls: Any, settings: GceSettings) -> None:
        self.client = firewalls
        self.settings = settings
        self.project = settings.project
        self._lock = threading.Lock()
        self._deployment_done = False

    def ensure(self, cluster_id: str) -> None:
        """The deployment rule (once per process) and the cluster's rule, created if
        missing. Raises ``GoogleAPICallError`` when Compute Engine refuses."""
        s = self.settings
        with self._lock:
            if not self._deployment_done:
                tag = deployment_tag(s.deployment)
                self._ensure(
                    compute_v1.Firewall(
                        name=tag,
                        network=s.network,
                        direction="INGRESS",
                        allowed=[compute_v1.Allowed(I_p_protocol="tcp")],
                        source_tags=[tag],
                        target_tags=[tag],
                        description=json.dumps({_DEPLOYMENT: s.deployment}),
                    )
                )
                self._deployment_done = True
        ports = [str(s.scheduler_port), str(s.dashboard_port)]
        self._ensure(
            compute_v1.Firewall(
                name=cluster_tag(cluster_id),
                network=s.network,
                direction="INGRESS",
                allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=ports)],
                source_ranges=[s.allowed_cidr],
                target_tags=[cluster_tag(cluster_id)],
                description=json.dumps({_DEPLOYMENT: s.deployment, _CLUSTER: cluster_id}),
            )
        )

    def _ensure(self, rule: compute_v1.Firewall) -> None:
        try:
            self.client.get(project=self.project, firewall=rule.name)
            return
        except gexc.NotFound:
            pass
        try:
            op = self.client.insert(project=self.project, firewall_resource=rule)
            op.result(timeout=OPERATION_TIMEOUT)
            log.info("created firewall rule %s", rule.name)
        except gexc.Conflict:
            pass  # created concurrently

    def clusters(self) -> dict[str, str]:
        """``{rule name: cluster id}`` of the per-cluster rules of this deployment."""
        found = {}
        request = compute_v1.ListFirewallsRequest(project=self.project, filter=BILLOW_NAMES)
        for rule in self.client.list(request=request):
            labels = owner_labels(rule)
            if labels.get(_DEPLOYMENT) == self.settings.deployment and labels.get(_CLUSTER):
                found[rule.name] = labels[_CLUSTER]
        return found

    def delete(self, name: str) -> None:
        """Delete the rule ``name``; an absent one counts as deleted."""
        with contextlib.suppress(gexc.NotFound):
            self.client.delete(project=self.project, firewall=name).result(
                timeout=OPERATION_TIMEOUT
            )
