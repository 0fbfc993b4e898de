"""Where instances run: the deployment's shared VPC, subnets, internet gateway and
default route, and one security group per cluster.

Every piece is looked up by its tags or name before it is created and tagged in its
create call, so each step is safe to repeat after a crash.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from ....core import tags as billow_tags
from ..errors import error_code
from .settings import EC2Settings, Network
from .tagging import cluster_tags, network_tags, tag_filters, tag_specs

log = logging.getLogger(__name__)


class DeploymentNetwork:
    """Finds or creates the network of one deployment; caches the shared part.

    Thread-safe. AWS errors other than the "already exists" races each step names are
    raised as ``botocore.exceptions.ClientError``.
    """

    def __init__(self, ec2: Any, deployment: str, settings: EC2Settings) -> None:
        self.ec2 = ec2
        self.deployment = deployment
        self.settings = settings
        self._lock = threading.Lock()
        self._shared: tuple[str | None, list[str]] | None = None  # (vpc id, subnet ids)

    def ensure(
        self, cluster_id: str, tags: Mapping[str, str], ingress: Sequence[str] = ()
    ) -> Network:
        """Find or create the deployment network and the cluster's security group.

        The VPC, subnets (one per availability zone, public IPs on launch), internet
        gateway and default route are shared by the deployment and tagged
        ``billow:deployment``; configured ``subnet_ids`` replace them. The per-cluster
        group, tagged with ``tags`` and this cluster, opens only the scheduler and
        dashboard ports to the CIDR blocks of ``ingress`` (the cluster's
        ``allow_ingress_from``; empty: the deployment's ``allowed_cidr``), plus all
        traffic between members of the group; a configured ``security_group_id`` is used
        as is. Concurrent first calls from *different processes* may each create a VPC;
        later calls then all use the one with the lowest id.

        Raises ``ValueError`` when configured subnets span several VPCs.
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
                group_id = self._ensure_security_group(
                    vpc_id,
                    cluster_id,
                    cluster_tags(self.deployment, cluster_id, tags),
                    list(ingress) or [self.settings.allowed_cidr],
                )
        return Network(vpc_id=vpc_id, subnet_ids=subnet_ids, security_group_id=group_id)

    def ensure_pool_group(self) -> tuple[list[str], str]:
        """The deployment's subnets and its warm-pool security group (created if missing):
        ``billow-<deployment>-pool``, tagged with the deployment and
        ``billow:network=pool-group`` but no cluster, so no cluster cleanup or resource
        sweep deletes it. It has no ingress rule at all; its default egress lets a pool
        instance download the kit."""
        with self._lock:
            if self._shared is None:
                self._shared = self._shared_network()
            vpc_id, subnet_ids = self._shared
            if vpc_id is None:
                vpc_id = self._vpc_of(subnet_ids)
                self._shared = (vpc_id, subnet_ids)
        name = f"billow-{self.deployment}-pool"
        group = self._find_security_group(vpc_id, name) or self._create_security_group(
            vpc_id,
            name,
            f"Billow warm pool of {self.deployment}: no ingress",
            network_tags(self.deployment, "pool-group"),
        )
        return subnet_ids, str(group["GroupId"])

    def forget(self) -> None:
        """Drop the cached shared network (EC2 said a subnet or group is gone): the next
        ``ensure`` looks it up, or creates it, again."""
        with self._lock:
            self._shared = None

    # -- shared by the deployment -------------------------------------------------------

    def _shared_network(self) -> tuple[str | None, list[str]]:
        if self.settings.subnet_ids:
            return None, list(self.settings.subnet_ids)
        vpc_id = self._ensure_vpc()
        self._ensure_internet_route(vpc_id)
        return vpc_id, self._ensure_subnets(vpc_id)

    def _filters(self, kind: str, vpc_id: str | None = None) -> list[dict[str, Any]]:
        """Filters of the shared network pieces of ``kind``, in ``vpc_id`` if given."""
        network = {billow_tags.NETWORK: kind}
        if vpc_id is None:
            return tag_filters(self.deployment, tags=network)
        return tag_filters(self.deployment, tags=network, vpc_id=[vpc_id])

    def _ensure_vpc(self) -> str:
        vpcs = self.ec2.describe_vpcs(Filters=self._filters("vpc"))["Vpcs"]
        if not vpcs:
            created = self.ec2.create_vpc(
                CidrBlock=self.settings.vpc_cidr,
                TagSpecifications=tag_specs(network_tags(self.deployment, "vpc"), "vpc"),
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
            tagged = self.ec2.describe_internet_gateways(Filters=self._filters("igw"))[
                "InternetGateways"
            ]
            free = [g for g in tagged if not g.get("Attachments")]
            gateway_id = (
                free[0]["InternetGatewayId"]
                if free
                else self.ec2.create_internet_gateway(
                    TagSpecifications=tag_specs(
                        network_tags(self.deployment, "igw"), "internet-gateway"
                    )
                )["InternetGateway"]["InternetGatewayId"]
            )
            try:
                self.ec2.attach_internet_gateway(InternetGatewayId=gateway_id, VpcId=vpc_id)
            except ClientError as e:
                if error_code(e) != "Resource.AlreadyAssociated":
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
                if error_code(e) != "RouteAlreadyExists":
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
                    TagSpecifications=tag_specs(network_tags(self.deployment, "subnet"), "subnet"),
                )["Subnet"]
            except ClientError as e:  # created concurrently: find it again
                if error_code(e) != "InvalidSubnet.Conflict":
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
        filters = self._filters("subnet", vpc_id)
        return list(self.ec2.describe_subnets(Filters=filters)["Subnets"])

    def _vpc_of(self, subnet_ids: list[str]) -> str:
        subnets = self.ec2.describe_subnets(SubnetIds=subnet_ids)["Subnets"]
        vpcs = {s["VpcId"] for s in subnets}
        if len(vpcs) != 1:
            raise ValueError(f"subnet_ids must all be in one VPC; they span {sorted(vpcs)}")
        return str(vpcs.pop())

    # -- one per cluster ----------------------------------------------------------------

    def _find_security_group(self, vpc_id: str, name: str) -> dict[str, Any] | None:
        groups = self.ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "group-name", "Values": [name]},
            ]
        )["SecurityGroups"]
        return groups[0] if groups else None

    def _create_security_group(
        self, vpc_id: str, name: str, description: str, tags: dict[str, str]
    ) -> dict[str, Any]:
        """Create the group ``name`` (no ingress rule yet), or find it when a concurrent
        call created it first."""
        try:
            created = self.ec2.create_security_group(
                GroupName=name,
                VpcId=vpc_id,
                Description=description,
                TagSpecifications=tag_specs({**tags, "Name": name}, "security-group"),
            )
        except ClientError as e:  # created concurrently: use that one
            if error_code(e) != "InvalidGroup.Duplicate":
                raise
            group = self._find_security_group(vpc_id, name)
            if group is None:
                raise
            return group
        return {"GroupId": created["GroupId"], "IpPermissions": []}

    def _ensure_security_group(
        self, vpc_id: str, cluster_id: str, tags: dict[str, str], cidrs: list[str]
    ) -> str:
        name = f"billow-{cluster_id}"
        group = self._find_security_group(vpc_id, name) or self._create_security_group(
            vpc_id, name, f"Billow cluster {cluster_id}: Dask scheduler and dashboard", tags
        )
        group_id = group["GroupId"]
        for rule in _wanted_rules(self.settings, group_id, cidrs):
            if _has_rule(group.get("IpPermissions", []), rule):
                continue
            try:
                self.ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[rule])
            except ClientError as e:
                if error_code(e) != "InvalidPermission.Duplicate":
                    raise
        return str(group_id)


def _wanted_rules(settings: EC2Settings, group_id: str, cidrs: list[str]) -> list[dict[str, Any]]:
    """Ingress of a cluster group: scheduler and dashboard ports from each of ``cidrs``
    (one rule per block and port), everything from members of the group itself."""
    rules: list[dict[str, Any]] = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        ranges = (
            {"Ipv6Ranges": [{"CidrIpv6": str(net), "Description": "billow clients"}]}
            if net.version == 6
            else {"IpRanges": [{"CidrIp": str(net), "Description": "billow clients"}]}
        )
        rules += [
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **ranges}
            for port in (settings.scheduler_port, settings.dashboard_port)
        ]
    rules.append(
        {
            "IpProtocol": "-1",
            "UserIdGroupPairs": [{"GroupId": group_id, "Description": "within the cluster"}],
        }
    )
    return rules


def _has_rule(existing: list[dict[str, Any]], rule: dict[str, Any]) -> bool:
    """Whether one of the group's ``existing`` permissions already grants ``rule``."""
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
