"""EC2 provider: each instance is one ``create_fleet(Type="instant")`` of capacity 1.

One launch template per cluster carries what all its instances share (AMI, security
group, shutdown behaviour, cluster tags). Each launch passes that instance's own user
data with the fleet request (``LaunchTemplateSpecificationUserData``, instant fleets
only), so the one-time bootstrap token never lands in a shared template. The user data
is a few lines of bash that carry only the control-plane URL and that token; the agent
fetches certificates and configuration over HTTPS.

Every call is safe to repeat after a crash: resources are found by their tags before
anything is created, they are tagged in the create call itself (``TagSpecifications``),
and fleet requests carry a ``ClientToken`` derived from the instance's idempotency token.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import re
import shlex
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ...core.models import InstanceInfo, InstanceRole, InstanceSpec, InstanceState

log = logging.getLogger(__name__)

TAG_CLUSTER = "billow:cluster-id"
TAG_DEPLOYMENT = "billow:deployment"
TAG_OWNER = "billow:owner"
TAG_INSTANCE_NAME = "billow:instance-name"
TAG_ROLE = "billow:role"
TAG_GENERATION = "billow:generation"
TAG_NETWORK = "billow:network"  # shared deployment network: "vpc", "subnet", "igw"

MAX_USER_DATA = 4096  # bytes of script; EC2 allows 16 KB, we stay far below it
BOOTSTRAP_ENV = ("BILLOW_CONTROL_URL", "BILLOW_INSTANCE_TOKEN", "BILLOW_ROLE", "BILLOW_CLUSTER_ID")
AGENT_LOG = "/var/log/billow-agent.log"

LIVE_STATES = ("pending", "running", "stopping", "stopped")
_STATES = {
    "pending": InstanceState.pending,
    "running": InstanceState.running,
    "shutting-down": InstanceState.terminated,
    "terminated": InstanceState.terminated,
    "stopping": InstanceState.terminated,
    "stopped": InstanceState.terminated,
}
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
_INSTANCE_TYPE = re.compile(r"^[a-z0-9-]+\.[a-z0-9-]+$")
_LOG_GROUP = re.compile(r"^[.\-_/#A-Za-z0-9]{1,512}$")


class EC2Settings(BaseModel):
    """How a deployment runs instances in EC2. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    ami_id: str = Field(pattern=r"^ami-[0-9a-f]{8,17}$")
    instance_types: list[str] = Field(min_length=1, max_length=20)
    purchase: Literal["spot", "on-demand", "spot_with_fallback"] = "spot_with_fallback"
    subnet_ids: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Reuse these subnets instead of creating a VPC.",
    )
    security_group_id: str | None = Field(
        default=None, description="Reuse this group for every cluster instead of one per cluster."
    )
    vpc_cidr: str = "10.86.0.0/16"
    max_subnets: int = Field(default=3, ge=1, le=6, description="Availability zones to span.")
    allowed_cidr: str = Field(
        description="Who may reach the scheduler and dashboard; the "
        "composition root passes the requester's CIDR."
    )
    scheduler_port: int = Field(default=8786, ge=1, le=65535)
    dashboard_port: int = Field(default=8787, ge=1, le=65535)
    log_group: str = "/billow/instances"
    python_package_spec: str = "billow[server]==0.1.0"
    instance_profile_arn: str | None = Field(
        default=None, description="Lets the instance's log agent write to ``log_group``."
    )

    @field_validator("instance_types")
    @classmethod
    def _check_types(cls, v: list[str]) -> list[str]:
        for t in v:
            if not _INSTANCE_TYPE.match(t):
                raise ValueError(f"{t!r} is not an EC2 instance type such as 'm6i.large'")
        return v

    @field_validator("vpc_cidr")
    @classmethod
    def _check_vpc_cidr(cls, v: str) -> str:
        net = ipaddress.ip_network(v)
        if net.version != 4 or not 16 <= net.prefixlen <= 24:
            raise ValueError("must be an IPv4 network from /16 to /24, such as '10.86.0.0/16'")
        return str(net)

    @field_validator("allowed_cidr")
    @classmethod
    def _check_allowed(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_network(v, strict=False))
        except ValueError as e:
            raise ValueError(f"{v!r} is not a CIDR block such as '203.0.113.7/32'") from e

    @field_validator("log_group")
    @classmethod
    def _check_log_group(cls, v: str) -> str:
        if not _LOG_GROUP.match(v):
            raise ValueError("may contain only letters, digits and . - _ / #")
        return v

    @model_validator(mode="after")
    def _check_ports(self) -> EC2Settings:
        if self.scheduler_port == self.dashboard_port:
            raise ValueError("scheduler_port and dashboard_port must differ")
        return self


class Network(BaseModel):
    """Where a cluster's instances run: subnets and the security group they share."""

    vpc_id: str | None
    subnet_ids: list[str]
    security_group_id: str


class EC2LaunchError(RuntimeError):
    """No instance was started (no capacity, quota, bad AMI...). Nothing was left running;
    the caller may retry the same spec later."""

    def __init__(self, message: str, codes: list[str]):
        super().__init__(message)
        self.codes = codes


def idempotency_token(value: str, purpose: str = "") -> str:
    """A stable EC2 ``ClientToken`` (at most 64 ASCII characters) for ``value``."""
    digest = hashlib.sha256(f"{purpose}\0{value}".encode()).hexdigest()
    return f"billow-{digest[:56]}"


def render_user_data(environment: Mapping[str, str], settings: EC2Settings) -> str:
    """The bootstrap script: the four ``BILLOW_*`` variables of ``environment`` and
    nothing else secret. Raises ``ValueError`` if one is missing or the script would
    exceed ``MAX_USER_DATA`` bytes."""
    missing = [k for k in BOOTSTRAP_ENV if not environment.get(k)]
    if missing:
        raise ValueError(f"instance environment lacks {', '.join(missing)}")
    env = {k: environment[k] for k in BOOTSTRAP_ENV}
    env |= {
        "BILLOW_HOST": "0.0.0.0",
        "BILLOW_SCHEDULER_PORT": str(settings.scheduler_port),
        "BILLOW_DASHBOARD_PORT": str(settings.dashboard_port),
        "PYTHONUNBUFFERED": "1",
    }
    logs_config = json.dumps(
        {
            "logs": {
                "logs_collected": {
                    "files": {
                        "collect_list": [
                            {
                                "file_path": AGENT_LOG,
                                "log_group_name": settings.log_group,
                                "log_stream_name": "{instance_id}",
                            }
                        ]
                    }
                }
            }
        }
    )
    cw_ctl = "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl"
    lines = [
        "#!/bin/bash",
        "# Billow bootstrap: only the control-plane URL and a one-time token travel here;",
        "# the agent trades the token for certificates and configuration over HTTPS.",
        f"exec >>{AGENT_LOG} 2>&1",
        "umask 077",
        *(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
        "if command -v dnf >/dev/null; then",
        "  dnf install -y -q python3.11 python3.11-pip amazon-cloudwatch-agent || true",
        "fi",
        f"if [ -x {cw_ctl} ]; then",
        "  cat >/opt/billow-logs.json <<'BILLOW_LOGS'",
        logs_config,
        "BILLOW_LOGS",
        f"  {cw_ctl} -a fetch-config -m ec2 -s -c file:/opt/billow-logs.json || true",
        "fi",
        "PY=$(command -v python3.12 || command -v python3.11 || command -v python3)",
        '"$PY" -m venv /opt/billow'
        f" && /opt/billow/bin/pip install -q {shlex.quote(settings.python_package_spec)}"
        " && /opt/billow/bin/python -m billow.agent",
        'echo "billow: agent exited with code $?"',
        "sleep 15  # let the log agent ship the last lines",
        "shutdown -h now  # InstanceInitiatedShutdownBehavior=terminate",
        "",
    ]
    script = "\n".join(lines)
    size = len(script.encode())
    if size >= MAX_USER_DATA:
        raise ValueError(f"user data is {size} bytes; it must stay below {MAX_USER_DATA}")
    return script


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _tag_specs(tags: Mapping[str, str], *resource_types: str) -> list[dict[str, Any]]:
    return [{"ResourceType": r, "Tags": _tag_list(tags)} for r in resource_types]


def _tags_of(resource: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class EC2Provider:
    """Implements ``billow_control.core.ports.Provider`` with EC2 instant fleets.

    ``ec2`` and ``logs`` are injected boto3 clients (EC2 and CloudWatch Logs). AWS errors
    other than the "already exists / already gone" cases each method names are raised as
    ``botocore.exceptions.ClientError``; the reconciler retries them with backoff.
    """

    def __init__(self, ec2: Any, logs: Any, deployment: str, settings: EC2Settings) -> None:
        self.ec2 = ec2
        self.logs = logs
        self.deployment = deployment
        self.settings = settings
        self._lock = threading.Lock()
        self._shared: tuple[str | None, list[str]] | None = None  # (vpc id, subnet ids)

    # -- network ------------------------------------------------------------------------

    def ensure_network(self, cluster_id: str, tags: Mapping[str, str]) -> Network:
        """Find or create the deployment network and the cluster's security group.

        The VPC, subnets (one per availability zone, public IPs on launch), internet
        gateway and default route are shared by the deployment and tagged
        ``billow:deployment``; configured ``subnet_ids`` replace them. The per-cluster
        group opens only the scheduler and dashboard ports to ``allowed_cidr``, plus all
        traffic between members of the group; a configured ``security_group_id`` is used
        as is. Idempotent: everything is looked up by tag or name before it is created.
        Concurrent first calls from *different processes* may each create a VPC; later
        calls then all use the one with the lowest id.
        """
        with self._lock:
            if self._shared is None:
                self._shared = self._shared_network()
            vpc_id, subnet_ids = self._shared
            if self.settings.security_group_id:
                group_id = self.settings.security_group_id
            else:
                if vpc_id is None:
                    vpc_id = self._vpc_of(subnet_ids)
                    self._shared = (vpc_id, subnet_ids)
                group_id = self._ensure_security_group(vpc_id, self._cluster_tags(cluster_id, tags))
        return Network(vpc_id=vpc_id, subnet_ids=subnet_ids, security_group_id=group_id)

    def _shared_network(self) -> tuple[str | None, list[str]]:
        if self.settings.subnet_ids:
            return None, list(self.settings.subnet_ids)
        vpc_id = self._ensure_vpc()
        self._ensure_internet_route(vpc_id)
        return vpc_id, self._ensure_subnets(vpc_id)

    def _network_tags(self, kind: str) -> dict[str, str]:
        return {
            TAG_DEPLOYMENT: self.deployment,
            TAG_NETWORK: kind,
            "Name": f"billow-{self.deployment}",
        }

    def _network_filters(self, kind: str) -> list[dict[str, Any]]:
        return [
            {"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [self.deployment]},
            {"Name": f"tag:{TAG_NETWORK}", "Values": [kind]},
        ]

    def _ensure_vpc(self) -> str:
        vpcs = self.ec2.describe_vpcs(Filters=self._network_filters("vpc"))["Vpcs"]
        if not vpcs:
            created = self.ec2.create_vpc(
                CidrBlock=self.settings.vpc_cidr,
                TagSpecifications=_tag_specs(self._network_tags("vpc"), "vpc"),
            )["Vpc"]
            log.info("created VPC %s for deployment %s", created["VpcId"], self.deployment)
            vpcs = [created]
        return str(min(v["VpcId"] for v in vpcs))

    def _ensure_internet_route(self, vpc_id: str) -> None:
        attached = self.ec2.describe_internet_gateways(
            Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}]
        )["InternetGateways"]
        if attached:
            gateway_id = attached[0]["InternetGatewayId"]
        else:
            tagged = self.ec2.describe_internet_gateways(Filters=self._network_filters("igw"))[
                "InternetGateways"
            ]
            free = [g for g in tagged if not g.get("Attachments")]
            gateway_id = (
                free[0]["InternetGatewayId"]
                if free
                else self.ec2.create_internet_gateway(
                    TagSpecifications=_tag_specs(self._network_tags("igw"), "internet-gateway")
                )["InternetGateway"]["InternetGatewayId"]
            )
            try:
                self.ec2.attach_internet_gateway(InternetGatewayId=gateway_id, VpcId=vpc_id)
            except ClientError as e:
                if _code(e) != "Resource.AlreadyAssociated":
                    raise
        tables = self.ec2.describe_route_tables(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "association.main", "Values": ["true"]},
            ]
        )["RouteTables"]
        for table in tables:
            if any(r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in table.get("Routes", [])):
                continue
            try:
                self.ec2.create_route(
                    RouteTableId=table["RouteTableId"],
                    DestinationCidrBlock="0.0.0.0/0",
                    GatewayId=gateway_id,
                )
            except ClientError as e:
                if _code(e) != "RouteAlreadyExists":
                    raise

    def _ensure_subnets(self, vpc_id: str) -> list[str]:
        zones = sorted(
            z["ZoneName"]
            for z in self.ec2.describe_availability_zones(
                Filters=[{"Name": "state", "Values": ["available"]}]
            )["AvailabilityZones"]
            if z.get("ZoneType", "availability-zone") == "availability-zone"
        )[: self.settings.max_subnets]
        vpc_net = ipaddress.ip_network(self.settings.vpc_cidr)
        blocks = list(vpc_net.subnets(new_prefix=min(vpc_net.prefixlen + 4, 28)))
        subnets: dict[str, dict[str, Any]] = {}
        for s in self._subnets(vpc_id):
            subnets.setdefault(s["AvailabilityZone"], s)
        for index, zone in enumerate(zones):
            if zone in subnets:
                continue
            try:
                subnets[zone] = self.ec2.create_subnet(
                    VpcId=vpc_id,
                    CidrBlock=str(blocks[index]),
                    AvailabilityZone=zone,
                    TagSpecifications=_tag_specs(self._network_tags("subnet"), "subnet"),
                )["Subnet"]
            except ClientError as e:  # created concurrently: find it again
                if _code(e) != "InvalidSubnet.Conflict":
                    raise
                found = [s for s in self._subnets(vpc_id) if s["AvailabilityZone"] == zone]
                if not found:
                    raise
                subnets[zone] = found[0]
        for subnet in subnets.values():
            if not subnet.get("MapPublicIpOnLaunch"):
                self.ec2.modify_subnet_attribute(
                    SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": True}
                )
        return [subnets[z]["SubnetId"] for z in sorted(subnets)]

    def _subnets(self, vpc_id: str) -> list[dict[str, Any]]:
        return list(
            self.ec2.describe_subnets(
                Filters=[*self._network_filters("subnet"), {"Name": "vpc-id", "Values": [vpc_id]}]
            )["Subnets"]
        )

    def _vpc_of(self, subnet_ids: list[str]) -> str:
        subnets = self.ec2.describe_subnets(SubnetIds=subnet_ids)["Subnets"]
        vpcs = {s["VpcId"] for s in subnets}
        if len(vpcs) != 1:
            raise ValueError(f"subnet_ids must all be in one VPC; they span {sorted(vpcs)}")
        return vpcs.pop()

    def _wanted_rules(self, group_id: str) -> list[dict[str, Any]]:
        net = ipaddress.ip_network(self.settings.allowed_cidr)
        ranges = (
            {"Ipv6Ranges": [{"CidrIpv6": str(net), "Description": "billow clients"}]}
            if net.version == 6
            else {"IpRanges": [{"CidrIp": str(net), "Description": "billow clients"}]}
        )
        rules: list[dict[str, Any]] = [
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **ranges}
            for port in (self.settings.scheduler_port, self.settings.dashboard_port)
        ]
        rules.append(
            {
                "IpProtocol": "-1",
                "UserIdGroupPairs": [{"GroupId": group_id, "Description": "within the cluster"}],
            }
        )
        return rules

    @staticmethod
    def _has_rule(existing: list[dict[str, Any]], rule: dict[str, Any]) -> bool:
        for perm in existing:
            if perm.get("IpProtocol") != rule["IpProtocol"]:
                continue
            if rule["IpProtocol"] != "-1" and (perm.get("FromPort"), perm.get("ToPort")) != (
                rule["FromPort"],
                rule["ToPort"],
            ):
                continue
            if "UserIdGroupPairs" in rule:
                want = rule["UserIdGroupPairs"][0]["GroupId"]
                if any(p.get("GroupId") == want for p in perm.get("UserIdGroupPairs", [])):
                    return True
            elif "IpRanges" in rule:
                want = rule["IpRanges"][0]["CidrIp"]
                if any(r.get("CidrIp") == want for r in perm.get("IpRanges", [])):
                    return True
            else:
                want = rule["Ipv6Ranges"][0]["CidrIpv6"]
                if any(r.get("CidrIpv6") == want for r in perm.get("Ipv6Ranges", [])):
                    return True
        return False

    def _find_security_group(self, vpc_id: str, name: str) -> dict[str, Any] | None:
        groups = self.ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "group-name", "Values": [name]},
            ]
        )["SecurityGroups"]
        return groups[0] if groups else None

    def _ensure_security_group(self, vpc_id: str, tags: dict[str, str]) -> str:
        cluster_id = tags[TAG_CLUSTER]
        name = f"billow-{cluster_id}"
        group = self._find_security_group(vpc_id, name)
        if group is None:
            try:
                created = self.ec2.create_security_group(
                    GroupName=name,
                    VpcId=vpc_id,
                    Description=f"Billow cluster {cluster_id}: Dask scheduler and dashboard",
                    TagSpecifications=_tag_specs({**tags, "Name": name}, "security-group"),
                )
                group = {"GroupId": created["GroupId"], "IpPermissions": []}
            except ClientError as e:  # created concurrently: use that one
                if _code(e) != "InvalidGroup.Duplicate":
                    raise
                group = self._find_security_group(vpc_id, name)
                if group is None:
                    raise
        group_id = group["GroupId"]
        for rule in self._wanted_rules(group_id):
            if self._has_rule(group.get("IpPermissions", []), rule):
                continue
            try:
                self.ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[rule])
            except ClientError as e:
                if _code(e) != "InvalidPermission.Duplicate":
                    raise
        return str(group_id)

    # -- launch template -----------------------------------------------------------------

    @staticmethod
    def launch_template_name(cluster_id: str) -> str:
        return f"billow-{cluster_id}"[:128]

    def _ensure_launch_template(
        self, cluster_id: str, network: Network, tags: dict[str, str]
    ) -> str:
        name = self.launch_template_name(cluster_id)
        found = self.ec2.describe_launch_templates(
            Filters=[{"Name": "launch-template-name", "Values": [name]}]
        )["LaunchTemplates"]
        if found:
            return str(found[0]["LaunchTemplateId"])
        data: dict[str, Any] = {
            "ImageId": self.settings.ami_id,
            "InstanceType": self.settings.instance_types[0],
            "SecurityGroupIds": [network.security_group_id],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": _tag_specs(tags, "instance", "volume"),
        }
        if self.settings.instance_profile_arn:
            data["IamInstanceProfile"] = {"Arn": self.settings.instance_profile_arn}
        try:
            created = self.ec2.create_launch_template(
                LaunchTemplateName=name,
                LaunchTemplateData=data,
                ClientToken=idempotency_token(cluster_id, "launch-template"),
                TagSpecifications=_tag_specs(tags, "launch-template"),
            )["LaunchTemplate"]
        except ClientError as e:
            if _code(e) != "InvalidLaunchTemplateName.AlreadyExistsException":
                raise
            return str(
                self.ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"][
                    0
                ]["LaunchTemplateId"]
            )
        return str(created["LaunchTemplateId"])

    # -- Provider ------------------------------------------------------------------------

    def launch(self, spec: InstanceSpec) -> InstanceInfo:
        """Start ``spec`` as a one-instance instant fleet, or return the instance already
        tagged with its cluster, generation and name (any state).

        ``purchase`` picks spot, on-demand, or spot first and on-demand when every spot
        pool reports no capacity. Raises ``EC2LaunchError`` when no instance started,
        ``ValueError`` for an unusable spec, ``ClientError`` for other AWS failures.
        """
        existing = self._find_instance(spec)
        if existing is not None:
            return existing
        user_data = render_user_data(spec.environment, self.settings)
        cluster_tags = self._cluster_tags(spec.cluster_id, spec.tags)
        network = self.ensure_network(spec.cluster_id, cluster_tags)
        template_id = self._ensure_launch_template(spec.cluster_id, network, cluster_tags)
        tags = {
            **cluster_tags,
            TAG_INSTANCE_NAME: spec.name,
            TAG_ROLE: spec.role.value,
            TAG_GENERATION: str(spec.generation),
            "Name": f"billow-{spec.cluster_id}-{spec.name}"[:255],
        }
        purchase = self.settings.purchase
        attempts = {
            "spot": ["spot"],
            "on-demand": ["on-demand"],
            "spot_with_fallback": ["spot", "on-demand"],
        }[purchase]
        codes: list[str] = []
        messages: list[str] = []
        for capacity in attempts:
            instance_id, errors = self._create_fleet(
                spec, template_id, network.subnet_ids, user_data, tags, capacity
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

    def _create_fleet(
        self,
        spec: InstanceSpec,
        template_id: str,
        subnet_ids: list[str],
        user_data: str,
        tags: dict[str, str],
        capacity: str,
    ) -> tuple[str | None, list[dict[str, Any]]]:
        overrides = [
            {"InstanceType": t, "SubnetId": s, "Priority": float(rank)}
            for rank, t in enumerate(self.settings.instance_types)
            for s in subnet_ids
        ]
        request: dict[str, Any] = {
            "Type": "instant",
            "ClientToken": idempotency_token(spec.client_token, capacity),
            "LaunchTemplateConfigs": [
                {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateId": template_id,
                        "Version": "$Default",
                        "LaunchTemplateSpecificationUserData": base64.b64encode(
                            user_data.encode()
                        ).decode(),
                    },
                    "Overrides": overrides,
                }
            ],
            "TargetCapacitySpecification": {
                "TotalTargetCapacity": 1,
                "DefaultTargetCapacityType": capacity,
            },
            "TagSpecifications": _tag_specs(tags, "fleet", "instance"),
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
            if _code(e).startswith(("InvalidSubnet", "InvalidGroup")):
                with self._lock:  # the network changed under us: look it up again next time
                    self._shared = None
            if _code(e) != "IdempotentParameterMismatch":
                raise
            # A retry after a crash with a fresh token: the first request's instance
            # exists, tagged at launch; wait for it to become visible.
            for _ in range(10):
                found = self._find_instance(spec)
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
        extra = {k: tags[k] for k in (TAG_INSTANCE_NAME, TAG_ROLE, TAG_GENERATION)}
        try:
            volumes = self.ec2.describe_volumes(
                Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]
            )["Volumes"]
            ids = [v["VolumeId"] for v in volumes]
            if ids:
                self.ec2.create_tags(Resources=ids, Tags=_tag_list(extra))
        except ClientError as e:
            log.info("could not tag volumes of %s yet: %s", instance_id, e)

    def _find_instance(self, spec: InstanceSpec) -> InstanceInfo | None:
        found = [
            info
            for info in (
                self._info(i)
                for i in self._instances(
                    [
                        {"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [self.deployment]},
                        {"Name": f"tag:{TAG_CLUSTER}", "Values": [spec.cluster_id]},
                        {"Name": f"tag:{TAG_INSTANCE_NAME}", "Values": [spec.name]},
                        {"Name": f"tag:{TAG_GENERATION}", "Values": [str(spec.generation)]},
                    ]
                )
            )
            if info is not None
        ]
        found.sort(key=lambda i: (i.state == InstanceState.terminated, i.launched_at))
        return found[0] if found else None

    def describe(self, cluster_id: str) -> list[InstanceInfo]:
        """Every instance tagged with this cluster and deployment that EC2 still lists
        (terminated ones stay visible for about an hour), oldest first. Shutting-down,
        stopping and stopped instances count as terminated."""
        infos = [
            info
            for info in (
                self._info(i)
                for i in self._instances(
                    [
                        {"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [self.deployment]},
                        {"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster_id]},
                    ]
                )
            )
            if info is not None
        ]
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
            for inst in self._instances(
                [
                    {"Name": "instance-id", "Values": chunk},
                    {"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [self.deployment]},
                ]
            ):
                clusters.add(_tags_of(inst).get(TAG_CLUSTER, ""))
                if inst["State"]["Name"] in LIVE_STATES:
                    live.append(inst["InstanceId"])
        for chunk in _chunks(live, 500):
            try:
                self.ec2.terminate_instances(InstanceIds=chunk)
            except ClientError as e:
                if _code(e) != "InvalidInstanceID.NotFound":
                    raise
                for instance_id in chunk:  # one vanished meanwhile: the rest one by one
                    try:
                        self.ec2.terminate_instances(InstanceIds=[instance_id])
                    except ClientError as e2:
                        if _code(e2) != "InvalidInstanceID.NotFound":
                            raise
        for cluster_id in sorted(c for c in clusters if c):
            self.cleanup_cluster(cluster_id)

    def cleanup_cluster(self, cluster_id: str) -> bool:
        """Delete the cluster's launch template and its own security group, once none of
        its instances is pending, running, stopping or stopped.

        Returns ``True`` when nothing is left. ``False`` means "call again later": an
        instance is still alive, or the group is still held by the network interfaces of
        shutting-down instances (EC2 answers ``DependencyViolation`` until they are gone).
        Shared network resources are never deleted here.
        """
        if self._alive(cluster_id):
            return False
        done = True
        templates = self.ec2.describe_launch_templates(
            Filters=[
                {"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [self.deployment]},
                {"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster_id]},
            ]
        )["LaunchTemplates"]
        for template in templates:
            try:
                self.ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
            except ClientError as e:
                if not _code(e).startswith("InvalidLaunchTemplate"):
                    raise
        groups = self.ec2.describe_security_groups(
            Filters=[
                {"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [self.deployment]},
                {"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster_id]},
            ]
        )["SecurityGroups"]
        for group in groups:
            if group["GroupId"] == self.settings.security_group_id:
                continue
            try:
                self.ec2.delete_security_group(GroupId=group["GroupId"])
            except ClientError as e:
                if _code(e) == "DependencyViolation":
                    done = False
                elif _code(e) != "InvalidGroup.NotFound":
                    raise
        return done

    def sweep_cluster_resources(self, active_cluster_ids: Iterable[str]) -> list[str]:
        """Run ``cleanup_cluster`` for every cluster of this deployment that still owns a
        launch template or security group but is not in ``active_cluster_ids``.

        For the scheduled reaper: it catches groups that outlived ``terminate`` (held by
        shutting-down instances) and resources of clusters that failed before any
        instance started. Returns the ids of the clusters now fully cleaned up.
        """
        keep = set(active_cluster_ids)
        by_deployment = [{"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [self.deployment]}]
        clusters: set[str] = set()
        for operation, key in (
            ("describe_launch_templates", "LaunchTemplates"),
            ("describe_security_groups", "SecurityGroups"),
        ):
            for page in self.ec2.get_paginator(operation).paginate(Filters=by_deployment):
                for resource in page[key]:
                    if resource.get("GroupId") == self.settings.security_group_id:
                        continue
                    clusters.add(_tags_of(resource).get(TAG_CLUSTER, ""))
        return [c for c in sorted(clusters - keep - {""}) if self.cleanup_cluster(c)]

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
            if _code(e) == "ResourceNotFoundException":
                return []
            raise
        return [str(e["message"]).rstrip("\n") for e in response.get("events", [])][-lines:]

    def list_deployment_instances(self) -> list[InstanceInfo]:
        """Pending, running, stopping and stopped instances tagged with this deployment."""
        return [
            info
            for info in (
                self._info(i)
                for i in self._instances(
                    [
                        {"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [self.deployment]},
                        {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
                    ]
                )
            )
            if info is not None
        ]

    # -- helpers -------------------------------------------------------------------------

    def _cluster_tags(self, cluster_id: str, tags: Mapping[str, str]) -> dict[str, str]:
        return {**tags, TAG_CLUSTER: cluster_id, TAG_DEPLOYMENT: self.deployment}

    def _alive(self, cluster_id: str) -> bool:
        return any(
            True
            for _ in self._instances(
                [
                    {"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [self.deployment]},
                    {"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster_id]},
                    {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
                ]
            )
        )

    def _instances(self, filters: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        paginator = self.ec2.get_paginator("describe_instances")
        for page in paginator.paginate(Filters=list(filters)):
            for reservation in page["Reservations"]:
                yield from reservation["Instances"]

    def _info(self, instance: Mapping[str, Any]) -> InstanceInfo | None:
        tags = _tags_of(instance)
        name, role = tags.get(TAG_INSTANCE_NAME), tags.get(TAG_ROLE)
        if not name or role is None or role not in InstanceRole.__members__:
            return None  # tagged by hand or by something else: not one of ours
        return InstanceInfo(
            id=instance["InstanceId"],
            cluster_id=tags.get(TAG_CLUSTER, ""),
            name=name,
            role=InstanceRole(role),
            state=_STATES.get(instance["State"]["Name"], InstanceState.terminated),
            tags=tags,
            launched_at=instance["LaunchTime"],
        )
