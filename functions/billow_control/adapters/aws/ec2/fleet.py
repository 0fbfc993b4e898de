"""Starting instances: each one is a ``create_fleet(Type="instant")`` of capacity 1.

One launch template per cluster carries what all its instances share (AMI, security
group, shutdown behaviour, cluster tags). Each launch passes that instance's own user
data with the fleet request (``LaunchTemplateSpecificationUserData``, instant fleets
only), so the one-time bootstrap token never lands in a shared template. Fleet requests
carry a ``ClientToken`` derived from the instance's ``client_token``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from ....core import tags as billow_tags
from ....core.models import InstanceInfo, InstanceSpec, InstanceState
from ..errors import error_code
from .instances import find_instance
from .machines import AmiResolver
from .network import DeploymentNetwork
from .settings import EC2Settings, Network
from .tagging import cluster_tags, tag_list, tag_specs
from .user_data import render_user_data

log = logging.getLogger(__name__)

# Fleet error codes that mean "no capacity of this kind right now": spot_with_fallback
# retries those on demand; anything else (bad AMI, limits, permissions) is raised.
CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "UnfulfillableCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "InsufficientFreeAddressesInSubnet",
    }
)
_ATTEMPTS = {
    "spot": ["spot"],
    "on-demand": ["on-demand"],
    "spot_with_fallback": ["spot", "on-demand"],
}


class EC2LaunchError(RuntimeError):
    """No instance was started (no capacity, quota, bad AMI...). Nothing was left running;
    the caller may retry the same spec later. ``codes`` are EC2's fleet error codes."""

    def __init__(self, message: str, codes: list[str]):
        super().__init__(message)
        self.codes = codes


def idempotency_token(value: str, purpose: str = "") -> str:
    """A stable EC2 ``ClientToken`` (at most 64 ASCII characters) for ``value``."""
    digest = hashlib.sha256(f"{purpose}\0{value}".encode()).hexdigest()
    return f"billow-{digest[:56]}"


def launch_template_name(cluster_id: str) -> str:
    """The name of the cluster's launch template (EC2 allows 128 characters)."""
    return f"billow-{cluster_id}"[:128]


class FleetLauncher:
    """Starts one instance per ``InstanceSpec``; see ``launch``."""

    def __init__(
        self,
        ec2: Any,
        deployment: str,
        settings: EC2Settings,
        network: DeploymentNetwork,
        images: AmiResolver | None = None,
    ) -> None:
        self.ec2 = ec2
        self.deployment = deployment
        self.settings = settings
        self.network = network
        self.images = images

    def launch(self, spec: InstanceSpec) -> InstanceInfo:
        """Start ``spec`` as a one-instance instant fleet, or return the instance already
        tagged with its deployment, cluster and instance name (any state).

        The spec's ``vm_types`` (else the deployment's ``instance_types``) are tried in
        order; its ``spot_policy`` (else the deployment's ``purchase``) picks spot,
        on-demand, or spot first and on-demand when every spot pool reports no capacity
        (on demand at once after the cluster lost a spot instance: ``after_interruption``).

        Raises
        ------
        EC2LaunchError
            No instance started.
        ValueError
            The spec cannot be turned into user data, or configured subnets span VPCs.
        botocore.exceptions.ClientError
            Any other AWS failure; retrying the same spec is safe.
        """
        existing = find_instance(self.ec2, self.deployment, spec)
        if existing is not None:
            return existing
        types = spec.vm_types or self.settings.instance_types
        if not types:
            raise ValueError(
                f"no machine type for {spec.name}: the spec and the deployment name none"
            )
        user_data = render_user_data(spec.environment, self.settings)
        shared_tags = cluster_tags(self.deployment, spec.cluster_id, spec.tags)
        network = self.network.ensure(spec.cluster_id, shared_tags, spec.ingress)
        image = self.image(spec.arch)
        template_id = self._ensure_launch_template(
            spec.cluster_id, network, shared_tags, image, types[0]
        )
        tags = {
            **shared_tags,
            billow_tags.INSTANCE_NAME: spec.name,
            billow_tags.ROLE: spec.role.value,
            "Name": f"billow-{spec.cluster_id}-{spec.name}"[:255],
        }
        purchase = spec.spot_policy or self.settings.purchase
        if spec.after_interruption and purchase == "spot_with_fallback":
            purchase = "on-demand"  # the cluster already lost spot capacity once
        codes: list[str] = []
        messages: list[str] = []
        for capacity in _ATTEMPTS[purchase]:
            instance_id, errors = self._create_fleet(
                spec, template_id, network.subnet_ids, user_data, tags, capacity, types
            )
            if instance_id is not None:
                self._tag_volumes(instance_id, tags)
                log.info(
                    "launched %s %s as %s (%s)", spec.cluster_id, spec.name, instance_id, capacity
                )
                return InstanceInfo(
                    id=instance_id,
                    cluster_id=spec.cluster_id,
                    name=spec.name,
                    role=spec.role,
                    state=InstanceState.pending,
                    tags=tags,
                    launched_at=datetime.now(UTC),
                )
            codes += [e.get("ErrorCode", "") for e in errors]
            messages += [f"{e.get('ErrorCode')}: {e.get('ErrorMessage')}" for e in errors]
            if not errors or not all(e.get("ErrorCode") in CAPACITY_ERRORS for e in errors):
                break
        raise EC2LaunchError(
            f"could not start {spec.name} of cluster {spec.cluster_id} ({purchase}): "
            + ("; ".join(dict.fromkeys(messages)) or "EC2 returned no instance"),
            codes,
        )

    def image(self, arch: str) -> str:
        """The image of instances of ``arch``; raises ``ValueError`` when none is set."""
        if self.images is not None:
            return self.images.image_for(arch)
        if self.settings.ami_id:
            return self.settings.ami_id
        raise ValueError("no image: set BILLOW_AMI_ID or give the provider an AmiResolver")

    def _ensure_launch_template(
        self, cluster_id: str, network: Network, tags: dict[str, str], image: str, first: str
    ) -> str:
        name = launch_template_name(cluster_id)
        found = self.ec2.describe_launch_templates(
            Filters=[{"Name": "launch-template-name", "Values": [name]}]
        )["LaunchTemplates"]
        if found:
            return str(found[0]["LaunchTemplateId"])
        data: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": first,
            "SecurityGroupIds": [network.security_group_id],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": tag_specs(tags, "instance", "volume"),
        }
        if self.settings.instance_profile_arn:
            data["IamInstanceProfile"] = {"Arn": self.settings.instance_profile_arn}
        try:
            created = self.ec2.create_launch_template(
                LaunchTemplateName=name,
                LaunchTemplateData=data,
                ClientToken=idempotency_token(cluster_id, "launch-template"),
                TagSpecifications=tag_specs(tags, "launch-template"),
            )["LaunchTemplate"]
        except ClientError as e:
            if error_code(e) != "InvalidLaunchTemplateName.AlreadyExistsException":
                raise
            described = self.ec2.describe_launch_templates(LaunchTemplateNames=[name])
            return str(described["LaunchTemplates"][0]["LaunchTemplateId"])
        return str(created["LaunchTemplateId"])

    def _create_fleet(
        self,
        spec: InstanceSpec,
        template_id: str,
        subnet_ids: list[str],
        user_data: str,
        tags: dict[str, str],
        capacity: str,
        types: list[str],
    ) -> tuple[str | None, list[dict[str, Any]]]:
        """``(instance id, [])`` when EC2 started (or had already started) the instance,
        else ``(None, fleet errors)``."""
        overrides = [
            {"InstanceType": t, "SubnetId": s, "Priority": float(rank)}
            for rank, t in enumerate(types)
            for s in subnet_ids
        ]
        template = {
            "LaunchTemplateId": template_id,
            "Version": "$Default",
            "LaunchTemplateSpecificationUserData": base64.b64encode(user_data.encode()).decode(),
        }
        request: dict[str, Any] = {
            "Type": "instant",
            "ClientToken": idempotency_token(spec.client_token, capacity),
            "LaunchTemplateConfigs": [
                {"LaunchTemplateSpecification": template, "Overrides": overrides}
            ],
            "TargetCapacitySpecification": {
                "TotalTargetCapacity": 1,
                "DefaultTargetCapacityType": capacity,
            },
            "TagSpecifications": tag_specs(tags, "fleet", "instance"),
        }
        if capacity == "spot":
            request["SpotOptions"] = {
                "AllocationStrategy": "price-capacity-optimized",
                "InstanceInterruptionBehavior": "terminate",
            }
        else:
            request["OnDemandOptions"] = {"AllocationStrategy": "prioritized"}
        try:
            response = self.ec2.create_fleet(**request)
        except ClientError as e:
            if error_code(e).startswith(("InvalidSubnet", "InvalidGroup")):
                self.network.forget()  # the network changed under us: look it up again
            if error_code(e) != "IdempotentParameterMismatch":
                raise
            # A retry after a crash with a fresh token: the first request's instance
            # exists, tagged at launch; wait for it to become visible.
            for _ in range(10):
                found = find_instance(self.ec2, self.deployment, spec)
                if found is not None:
                    return found.id, []
                time.sleep(1.0)
            raise
        for item in response.get("Instances") or []:
            for instance_id in item.get("InstanceIds") or []:
                return str(instance_id), []
        return None, list(response.get("Errors") or [])

    def _tag_volumes(self, instance_id: str, tags: dict[str, str]) -> None:
        """Add the instance's name and role to its volumes (the launch template already
        gave them the cluster tags at creation). Best effort: volumes of a still-pending
        instance may not be visible yet."""
        extra = {k: tags[k] for k in (billow_tags.INSTANCE_NAME, billow_tags.ROLE)}
        try:
            volumes = self.ec2.describe_volumes(
                Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]
            )["Volumes"]
            ids = [v["VolumeId"] for v in volumes]
            if ids:
                self.ec2.create_tags(Resources=ids, Tags=tag_list(extra))
        except ClientError as e:
            log.info("could not tag volumes of %s yet: %s", instance_id, e)
