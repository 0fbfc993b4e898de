"""The EC2 warm pool: stopped instances per deployment, started on demand.

``refill`` (the scheduled reaper's pass) keeps ``warm_pool_size`` instances per pool key
(instance type, architecture, image) in ``pending``/``running``/``stopping``/``stopped``.
Each is an on-demand ``RunInstances`` in the deployment's subnets and pool security group
(no ingress), IMDSv2 required, ``InstanceInitiatedShutdownBehavior=stop``, with the
pool's user data (``pool_user_data``: prepare the kit, power off), tagged
``billow:deployment`` and ``billow:pool=<key>``, never ``billow:cluster-id`` or
``billow:owner``.

``take`` (inside ``EC2Provider.launch``) hands one stopped pool instance to a cluster:
a conditional DynamoDB claim (``PoolClaims``) that exactly one launch wins, idempotent
for the same ``client_token``, then, each step safe to repeat: the cluster's tags on the
instance and its volumes, the pool tag removed, the cluster's security group,
``InstanceInitiatedShutdownBehavior=terminate``, the instance's bootstrap as user data
(``render_user_data``, the fleet path's, with the spec's fresh one-time token), and
``StartInstances``. A launch retried after a crash anywhere in between finds its claim by
token and repeats the steps; the claim guarantees no other cluster ever tags the instance.

Isolation, by construction:

* a pool instance never runs tenant code: until a claim it has booted only the pool's
  script, which Billow wrote and which holds no token, certificate or cluster setting;
  after it, its user data is the bootstrap, which runs only the agent, and the agent
  gets certificates only by trading the fresh one-time token (the cluster's own CA);
* an instance serves one cluster: the pool tag is removed on take and never written
  again, the refill never counts an instance with a cluster tag, and the instance is
  terminated with its cluster (``terminate`` behaviour, the cluster's teardown);
* the orphan sweep never sees pool instances: ``list_deployment_instances`` keeps only
  instances with an instance name and role tag, which pool instances lack.

Not poolable (cold start through the fleet): spot or spot-first purchases (pool
instances are on-demand; ``spot_with_fallback`` takes from the pool only after the
cluster lost a spot instance, when it would launch on demand anyway), a spec whose types
do not include a pool type, another architecture, or a deployment without a claims table
or instance kit. The spec does not say whether the cluster has software of its own; that
is harmless: the bootstrap fetches the cluster's own kit at start either way, and the
pool's warm uv cache and Python serve both.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from botocore.exceptions import ClientError

from ....core import tags as billow_tags
from ....core.models import InstanceInfo, InstanceSpec, InstanceState
from ..errors import error_code
from .fleet import FleetLauncher
from .instances import LIVE_STATES, find_instance, instances
from .network import DeploymentNetwork
from .pool_user_data import render_pool_user_data
from .settings import EC2Settings
from .tagging import cluster_tags, tag_filters, tag_list, tag_specs, tags_of
from .user_data import render_user_data

log = logging.getLogger(__name__)

REFILL_BATCH = 4  # pool instances launched per refill pass, at most
PREPARE_LIMIT = timedelta(minutes=30)  # a pool instance still up after this never stopped
ABANDONED_CLAIM = timedelta(minutes=15)  # a claim not followed by tags after this is dead
_TAKE_ATTEMPTS = 3  # stopped candidates tried per launch before a cold start


class PoolClaims(Protocol):
    """Who took which pool instance (``adapters.aws.pool_claims.DynamoPoolClaims``)."""

    def claim(self, instance_id: str, client_token: str) -> bool:
        """Whether ``client_token`` holds ``instance_id`` now; exactly one token wins."""
        ...

    def claimed_by(self, client_token: str) -> str | None:
        """The instance ``client_token`` claimed, if any."""
        ...

    def claimed_at(self, instance_id: str) -> datetime | None:
        """When ``instance_id`` was claimed, ``None`` if never."""
        ...


KitSource = Callable[[], dict[str, Any] | None]


class EC2WarmPool:
    """Keeps and hands out the deployment's stopped instances; see the module docstring.

    ``claims`` and ``kit`` (the deployment kit, ``pool_user_data.deployment_kit``) are
    injected; without either the pool is off whatever ``warm_pool_size`` says.
    """

    def __init__(
        self,
        ec2: Any,
        deployment: str,
        settings: EC2Settings,
        network: DeploymentNetwork,
        fleet: FleetLauncher,
        claims: PoolClaims | None,
        kit: KitSource | None,
    ) -> None:
        self.ec2 = ec2
        self.deployment = deployment
        self.settings = settings
        self.network = network
        self.fleet = fleet
        self.claims = claims
        self.kit = kit
        self._archs: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        return self.settings.warm_pool_size > 0 and self.claims is not None

    def types(self) -> list[str]:
        """The pool's instance types: ``warm_pool_types``, else the first deployment type."""
        return list(self.settings.warm_pool_types or self.settings.instance_types[:1])

    def arch_of(self, instance_type: str) -> str:
        """``x86_64`` unless the type runs only ``arm64`` (``DescribeInstanceTypes``,
        cached); ``""`` for a type the region does not have (never poolable)."""
        if instance_type not in self._archs:
            try:
                rows = self.ec2.describe_instance_types(InstanceTypes=[instance_type])
            except ClientError as e:
                if error_code(e) != "InvalidInstanceType":
                    raise
                rows = {"InstanceTypes": []}
            archs = [
                a
                for row in rows["InstanceTypes"]
                for a in row["ProcessorInfo"]["SupportedArchitectures"]
            ]
            arch = "x86_64" if "x86_64" in archs else "arm64" if "arm64" in archs else ""
            self._archs[instance_type] = arch
        return self._archs[instance_type]

    def key(self, instance_type: str) -> str:
        arch = self.arch_of(instance_type)
        return f"{instance_type}/{arch}/{self.fleet.image(arch)}"

    # -- refill ---------------------------------------------------------------------------

    def refill(self) -> list[str]:
        """Launch pool instances up to ``warm_pool_size`` per key (at most
        ``REFILL_BATCH`` per call) and terminate those to retire: of a key no longer
        wanted (new image or type) or beyond the size, still up after ``PREPARE_LIMIT``
        (never powered off), or claimed ``ABANDONED_CLAIM`` ago and never tagged for a
        cluster. Returns the ids launched. Instances with a cluster tag are the cluster's
        and never counted or touched. A launch EC2 refuses (capacity, limits) is logged
        and retried next call; other AWS errors are raised."""
        if not self.enabled:
            return []
        kit = self.kit() if self.kit is not None else None
        if kit is None:
            log.warning("warm pool: the deployment has no instance kit; nothing launched")
            return []
        wanted = {self.key(t): t for t in self.types() if self.arch_of(t)}
        counts: Counter[str] = Counter()
        retire: list[str] = []
        now = datetime.now(UTC)
        for inst in sorted(self._pool_instances(), key=lambda i: i["InstanceId"]):
            tags, state = tags_of(inst), inst["State"]["Name"]
            if billow_tags.CLUSTER in tags:
                continue  # taken: its cluster owns it now
            key, iid = tags.get(billow_tags.POOL, ""), inst["InstanceId"]
            up = state in ("pending", "running")
            if up and now - inst["LaunchTime"] > PREPARE_LIMIT:
                retire.append(iid)
                continue
            claimed = self.claims.claimed_at(iid) if state == "stopped" and self.claims else None
            if claimed is not None:
                if now - claimed > ABANDONED_CLAIM:
                    retire.append(iid)
                else:
                    counts[key] += 1  # being taken right now
                continue
            if state == "stopped" and (
                key not in wanted or counts[key] >= self.settings.warm_pool_size
            ):
                retire.append(iid)
                continue
            counts[key] += 1
        if retire:
            log.info("warm pool: terminating %s", retire)
            self.ec2.terminate_instances(InstanceIds=retire)
        launched: list[str] = []
        subnet_ids, group_id = self.network.ensure_pool_group()
        for key, instance_type in sorted(wanted.items()):
            while counts[key] < self.settings.warm_pool_size and len(launched) < REFILL_BATCH:
                subnet = subnet_ids[(counts[key] + len(launched)) % len(subnet_ids)]
                instance_id = self._launch(instance_type, key, subnet, group_id, kit)
                if instance_id is None:
                    break
                launched.append(instance_id)
                counts[key] += 1
        return launched

    def _pool_instances(self) -> list[dict[str, Any]]:
        filters = tag_filters(self.deployment, instance_state_name=LIVE_STATES)
        filters.append({"Name": "tag-key", "Values": [billow_tags.POOL]})
        return list(instances(self.ec2, filters))

    def _launch(
        self, instance_type: str, key: str, subnet: str, group_id: str, kit: dict[str, Any]
    ) -> str | None:
        tags = {
            billow_tags.DEPLOYMENT: self.deployment,
            billow_tags.POOL: key,
            "Name": f"billow-{self.deployment}-pool"[:255],
        }
        request: dict[str, Any] = {
            "ImageId": key.rsplit("/", 1)[1],
            "InstanceType": instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "SubnetId": subnet,
            "SecurityGroupIds": [group_id],
            "InstanceInitiatedShutdownBehavior": "stop",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "UserData": render_pool_user_data(kit),
            "TagSpecifications": tag_specs(tags, "instance", "volume"),
        }
        if self.settings.instance_profile_arn:
            request["IamInstanceProfile"] = {"Arn": self.settings.instance_profile_arn}
        try:
            response = self.ec2.run_instances(**request)
        except ClientError as e:
            log.warning("warm pool: could not launch a %s: %s", instance_type, e)
            return None
        instance_id = str(response["Instances"][0]["InstanceId"])
        log.info("warm pool: launched %s (%s)", instance_id, key)
        return instance_id

    # -- take -----------------------------------------------------------------------------

    def pool_type(self, spec: InstanceSpec) -> str | None:
        """The pool type a launch of ``spec`` may take, or ``None`` (cold start)."""
        if not self.enabled:
            return None
        purchase = spec.spot_policy or self.settings.purchase
        if spec.after_interruption and purchase == "spot_with_fallback":
            purchase = "on-demand"
        if purchase != "on-demand":
            return None
        pool_types = set(self.types())
        for instance_type in spec.vm_types or self.settings.instance_types:
            if instance_type in pool_types and self.arch_of(instance_type) == spec.arch:
                return instance_type
        return None

    def take(self, spec: InstanceSpec) -> InstanceInfo | None:
        """Start ``spec`` on a stopped pool instance: the one its ``client_token`` claimed
        before (a retry), else a newly claimed one. ``None`` means "launch it cold": not
        poolable, an instance already launched for the spec, no stopped instance, or
        every claim lost. Raises ``botocore.exceptions.ClientError`` on AWS failures
        (retrying the same spec is safe) and ``ValueError`` as ``render_user_data``."""
        instance_type = self.pool_type(spec)
        if instance_type is None or self.claims is None:
            return None
        held = self.claims.claimed_by(spec.client_token)
        if held is not None:
            return self._resume(held, spec)
        if find_instance(self.ec2, self.deployment, spec) is not None:
            return None  # launched cold before: the fleet path returns it
        key = self.key(instance_type)
        stopped = [
            inst
            for inst in self._pool_instances()
            if inst["State"]["Name"] == "stopped"
            and tags_of(inst).get(billow_tags.POOL) == key
            and billow_tags.CLUSTER not in tags_of(inst)
        ]
        random.shuffle(stopped)  # concurrent launches rarely race for the same one
        for inst in stopped[:_TAKE_ATTEMPTS]:
            if self.claims.claim(inst["InstanceId"], spec.client_token):
                log.info("warm pool: %s takes %s", spec.client_token, inst["InstanceId"])
                return self._hand_over(inst, spec)
        # Every claim lost; a concurrent launch of this very spec may be why.
        held = self.claims.claimed_by(spec.client_token) if stopped else None
        return self._resume(held, spec) if held is not None else None

    def _resume(self, instance_id: str, spec: InstanceSpec) -> InstanceInfo | None:
        """Carry on with the instance ``spec``'s token claimed; ``None`` when it is gone
        (terminated, or retired by the refill): the launch starts cold."""
        found = list(instances(self.ec2, tag_filters(self.deployment, instance_id=[instance_id])))
        if not found or found[0]["State"]["Name"] not in LIVE_STATES:
            return None
        return self._hand_over(found[0], spec)

    def _hand_over(self, inst: dict[str, Any], spec: InstanceSpec) -> InstanceInfo:
        """Make the claimed ``inst`` the spec's instance and start it; each step is
        idempotent, and skipped once the instance is starting or running."""
        instance_id, state = str(inst["InstanceId"]), inst["State"]["Name"]
        owner = tags_of(inst).get(billow_tags.CLUSTER)
        if owner not in (None, spec.cluster_id):
            raise RuntimeError(f"{instance_id} claimed by {spec.client_token} is tagged {owner}")
        shared = cluster_tags(self.deployment, spec.cluster_id, spec.tags)
        tags = {
            **shared,
            billow_tags.INSTANCE_NAME: spec.name,
            billow_tags.ROLE: spec.role.value,
            "Name": f"billow-{spec.cluster_id}-{spec.name}"[:255],
        }
        if state == "stopped":
            user_data = render_user_data(spec.environment, self.settings)
            network = self.network.ensure(spec.cluster_id, shared, spec.ingress)
            volumes = [
                str(v["VolumeId"])
                for v in self.ec2.describe_volumes(
                    Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]
                )["Volumes"]
            ]
            resources = [instance_id, *volumes]
            self.ec2.create_tags(Resources=resources, Tags=tag_list(tags))
            self.ec2.delete_tags(Resources=resources, Tags=[{"Key": billow_tags.POOL}])
            modify = self.ec2.modify_instance_attribute
            modify(InstanceId=instance_id, Groups=[network.security_group_id])
            modify(
                InstanceId=instance_id,
                Attribute="instanceInitiatedShutdownBehavior",
                Value="terminate",
            )
            modify(InstanceId=instance_id, UserData={"Value": user_data.encode()})
            self.ec2.start_instances(InstanceIds=[instance_id])
            log.info("warm pool: started %s for %s", instance_id, spec.client_token)
        elif state not in ("pending", "running"):
            # stopping: it was started and is already going down; the cluster sees it end
            return _info(instance_id, spec, tags, InstanceState.terminated)
        return _info(instance_id, spec, tags, InstanceState.pending)


def _info(
    instance_id: str, spec: InstanceSpec, tags: dict[str, str], state: InstanceState
) -> InstanceInfo:
    return InstanceInfo(
        id=instance_id,
        cluster_id=spec.cluster_id,
        name=spec.name,
        role=spec.role,
        state=state,
        tags=tags,
        launched_at=datetime.now(UTC),
    )
