"""``EC2Provider``: the ``Provider`` port on EC2 (instances, their cluster resources and
their CloudWatch logs).

Every call is safe to repeat after a crash: resources are found by their tags before
anything is created, they are tagged in the create call itself (``TagSpecifications``),
and fleet requests carry a ``ClientToken`` derived from the instance's ``client_token``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from botocore.exceptions import ClientError

from ....core import tags as billow_tags
from ....core.models import InstanceInfo, InstanceSpec
from ..errors import error_code
from .fleet import FleetLauncher
from .instances import LIVE_STATES, instance_infos, instances
from .machines import AmiResolver
from .network import DeploymentNetwork
from .pool import EC2WarmPool, KitSource, PoolClaims
from .settings import EC2Settings, Network
from .tagging import tag_filters, tags_of


class EC2Provider:
    """Implements ``billow_control.core.ports.Provider`` with EC2 instant fleets.

    ``ec2`` and ``logs`` are injected boto3 clients (EC2 and CloudWatch Logs). AWS errors
    other than the "already exists / already gone" cases each method names are raised as
    ``botocore.exceptions.ClientError``; the reconciler retries them with backoff.
    """

    def __init__(
        self,
        ec2: Any,
        logs: Any,
        deployment: str,
        settings: EC2Settings,
        images: AmiResolver | None = None,
        pool_claims: PoolClaims | None = None,
        pool_kit: KitSource | None = None,
    ) -> None:
        self.ec2 = ec2
        self.logs = logs
        self.deployment = deployment
        self.settings = settings
        self.network = DeploymentNetwork(ec2, deployment, settings)
        self.fleet = FleetLauncher(ec2, deployment, settings, self.network, images)
        self.pool = EC2WarmPool(
            ec2, deployment, settings, self.network, self.fleet, pool_claims, pool_kit
        )

    def ensure_network(self, cluster_id: str, tags: Mapping[str, str]) -> Network:
        """The cluster's subnets and security group, created if missing (see
        ``DeploymentNetwork.ensure``)."""
        return self.network.ensure(cluster_id, tags)

    def launch(self, spec: InstanceSpec) -> InstanceInfo:
        """Start ``spec``, or return the instance already started for it: a stopped
        warm-pool instance when the pool is on and the spec poolable (``EC2WarmPool.take``),
        else a new one (``FleetLauncher.launch``; raises ``EC2LaunchError`` when none
        started)."""
        if self.pool.enabled:
            taken = self.pool.take(spec)
            if taken is not None:
                return taken
        return self.fleet.launch(spec)

    def refill_pool(self) -> list[str]:
        """Keep the warm pool full (``EC2WarmPool.refill``; nothing when it is off).
        Returns the ids of the pool instances launched."""
        return self.pool.refill()

    def describe(self, cluster_id: str) -> list[InstanceInfo]:
        """Every instance tagged with this cluster and deployment that EC2 still lists
        (terminated ones stay visible for about an hour), oldest first. Shutting-down,
        stopping and stopped instances count as terminated."""
        infos = instance_infos(self.ec2, tag_filters(self.deployment, cluster_id))
        return sorted(infos, key=lambda i: i.launched_at)

    def terminate(self, instance_ids: list[str]) -> None:
        """Terminate those of ``instance_ids`` that are this deployment's live instances;
        unknown, foreign and already-terminating ids are ignored. Once a cluster has no
        live instance left, its launch template and security group are deleted too (see
        ``cleanup_cluster``)."""
        ids = list(dict.fromkeys(i for i in instance_ids if i))
        clusters: set[str] = set()
        live: list[str] = []
        for chunk in _chunks(ids, 200):
            for inst in instances(self.ec2, tag_filters(self.deployment, instance_id=chunk)):
                clusters.add(tags_of(inst).get(billow_tags.CLUSTER, ""))
                if inst["State"]["Name"] in LIVE_STATES:
                    live.append(inst["InstanceId"])
        for chunk in _chunks(live, 500):
            try:
                self.ec2.terminate_instances(InstanceIds=chunk)
            except ClientError as e:
                if error_code(e) != "InvalidInstanceID.NotFound":
                    raise
                for instance_id in chunk:  # one vanished meanwhile: the rest one by one
                    try:
                        self.ec2.terminate_instances(InstanceIds=[instance_id])
                    except ClientError as e2:
                        if error_code(e2) != "InvalidInstanceID.NotFound":
                            raise
        for cluster_id in sorted(c for c in clusters if c):
            self.cleanup_cluster(cluster_id)

    def cleanup_cluster(self, cluster_id: str) -> bool:
        """Delete the cluster's launch template and its own security group, once none of
        its instances is pending, running, stopping or stopped.

        Returns ``True`` when nothing is left. ``False`` means "call again later": an
        instance is still alive, or the group is still held by the network interfaces of
        shutting-down instances (EC2 answers ``DependencyViolation`` until they are gone).
        Shared network resources and a configured ``security_group_id`` are never deleted.
        """
        alive = tag_filters(self.deployment, cluster_id, instance_state_name=LIVE_STATES)
        if any(True for _ in instances(self.ec2, alive)):
            return False
        done = True
        of_cluster = tag_filters(self.deployment, cluster_id)
        templates = self.ec2.describe_launch_templates(Filters=of_cluster)["LaunchTemplates"]
        for template in templates:
            try:
                self.ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
            except ClientError as e:
                if not error_code(e).startswith("InvalidLaunchTemplate"):
                    raise
        groups = self.ec2.describe_security_groups(Filters=of_cluster)["SecurityGroups"]
        for group in groups:
            if group["GroupId"] == self.settings.security_group_id:
                continue
            try:
                self.ec2.delete_security_group(GroupId=group["GroupId"])
            except ClientError as e:
                if error_code(e) == "DependencyViolation":
                    done = False
                elif error_code(e) != "InvalidGroup.NotFound":
                    raise
        return done

    def sweep_cluster_resources(self, is_active: Callable[[str], bool]) -> list[str]:
        """Run ``cleanup_cluster`` for every cluster of this deployment that still owns a
        launch template or security group (other than the configured shared
        ``security_group_id``) and for which ``is_active(cluster_id)`` is false.

        For the scheduled reaper: it catches groups that outlived ``terminate`` (held by
        shutting-down instances) and resources of clusters that failed before any
        instance started. Returns the ids of the clusters now fully cleaned up, sorted;
        the others are tried again on the next call. ``is_active`` is asked only about
        clusters that own such resources.
        """
        by_deployment = tag_filters(self.deployment)
        clusters: set[str] = set()
        for operation, key in (
            ("describe_launch_templates", "LaunchTemplates"),
            ("describe_security_groups", "SecurityGroups"),
        ):
            for page in self.ec2.get_paginator(operation).paginate(Filters=by_deployment):
                for resource in page[key]:
                    if resource.get("GroupId") == self.settings.security_group_id:
                        continue
                    clusters.add(tags_of(resource).get(billow_tags.CLUSTER, ""))
        return [c for c in sorted(clusters - {""}) if not is_active(c) and self.cleanup_cluster(c)]

    def tail_logs(self, instance_id: str, lines: int = 50) -> list[str]:
        """The last ``lines`` events of the log stream named after the instance in the
        deployment's log group; ``[]`` when the group or stream does not exist (yet)."""
        if lines <= 0:
            return []
        try:
            response = self.logs.get_log_events(
                logGroupName=self.settings.log_group,
                logStreamName=instance_id,
                limit=min(lines, 10000),
                startFromHead=False,
            )
        except ClientError as e:
            if error_code(e) == "ResourceNotFoundException":
                return []
            raise
        return [str(e["message"]).rstrip("\n") for e in response.get("events", [])][-lines:]

    def list_deployment_instances(self) -> list[InstanceInfo]:
        """Pending, running, stopping and stopped instances tagged with this deployment
        that belong to a cluster (instance name and role tags): warm-pool instances,
        which have neither, are never listed, so the orphan sweep never reaps them."""
        live = tag_filters(self.deployment, instance_state_name=LIVE_STATES)
        return instance_infos(self.ec2, live)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
