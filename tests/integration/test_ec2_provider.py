"""EC2Provider against a real ``moto_server`` (EC2 and CloudWatch Logs APIs).

What moto 5.2 does not simulate, and so these tests cannot prove:

* instances never boot: the user data is checked as text (and with ``bash -n``), not run;
* fleets ignore ``ClientToken`` (idempotency here comes from the tag look-up), never run
  out of spot capacity (the fallback test injects AWS's documented no-capacity answer
  with a botocore ``before-call`` hook), and do not apply the launch template's
  ``SecurityGroupIds`` or ``InstanceInitiatedShutdownBehavior`` to the instances they
  start (both are asserted on the launch template instead);
* terminated instances never pass through ``shutting-down``, so a security group is never
  held by a dying instance's network interface (``DependencyViolation``).
"""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from billow_control.adapters.aws.ec2 import (
    MAX_USER_DATA,
    AmiResolver,
    EC2LaunchError,
    EC2Provider,
    EC2Settings,
)
from billow_control.core import tags
from billow_control.core.models import InstanceRole, InstanceSpec, InstanceState, new_id
from tests.support.aws import amazon_linux_image

pytestmark = pytest.mark.integration

REGION = "us-east-1"
ALLOWED = "203.0.113.7/32"
CONTROL_URL = "https://control.example.test/prod"
BILLOW_TAGS = (tags.CLUSTER, tags.DEPLOYMENT, tags.OWNER)


@pytest.fixture(scope="module")
def ec2(moto_url: str) -> Any:
    return boto3.client("ec2", endpoint_url=moto_url, region_name=REGION)


@pytest.fixture(scope="module")
def logs(moto_url: str) -> Any:
    return boto3.client("logs", endpoint_url=moto_url, region_name=REGION)


@pytest.fixture(scope="module")
def ami_id(ec2: Any) -> str:
    return amazon_linux_image(ec2)


@pytest.fixture
def deployment() -> str:
    """A fresh deployment per test: the moto server is shared by the whole session."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_provider(ec2: Any, logs: Any, ami_id: str, deployment: str) -> Callable[..., EC2Provider]:
    def make(**overrides: Any) -> EC2Provider:
        settings = EC2Settings(
            ami_id=ami_id,
            instance_types=["t3.medium", "m5.large"],
            purchase=overrides.pop("purchase", "on-demand"),
            allowed_cidr=ALLOWED,
            log_group=f"/billow/{deployment}",
            **overrides,
        )
        return EC2Provider(ec2, logs, deployment, settings)

    return make


@pytest.fixture
def make_spec(deployment: str) -> Callable[..., InstanceSpec]:
    cluster_id = new_id("c")

    def make(
        name: str = "scheduler",
        role: InstanceRole = InstanceRole.scheduler,
        cluster: str | None = None,
    ) -> InstanceSpec:
        cid = cluster or cluster_id
        return InstanceSpec(
            cluster_id=cid,
            name=name,
            role=role,
            cpu=2,
            memory="4 GiB",
            tags={
                "team": "data",
                tags.CLUSTER: cid,
                tags.DEPLOYMENT: deployment,
                tags.OWNER: "u-alice",
            },
            environment={
                "BILLOW_CONTROL_URL": CONTROL_URL,
                "BILLOW_INSTANCE_TOKEN": f"bit_{uuid.uuid4().hex}",
                "BILLOW_CLUSTER_ID": cid,
                "BILLOW_ROLE": role.value,
            },
        )

    return make


def launch_cluster(
    provider: EC2Provider, make_spec: Callable[..., InstanceSpec]
) -> list[InstanceSpec]:
    specs = [
        make_spec(),
        make_spec("worker-0", InstanceRole.worker),
        make_spec("worker-1", InstanceRole.worker),
    ]
    for spec in specs:
        provider.launch(spec)
    return specs


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def cluster_filter(spec: InstanceSpec) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{tags.CLUSTER}", "Values": [spec.cluster_id]}]


def user_data_of(ec2: Any, instance_id: str) -> str:
    value = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(value["UserData"]["Value"]).decode()


def test_launch_tags_instances_volumes_template_group_and_fleets(make_provider, make_spec, ec2):
    provider = make_provider()
    specs = launch_cluster(provider, make_spec)
    spec = specs[0]

    infos = provider.describe(spec.cluster_id)
    assert sorted(i.name for i in infos) == ["scheduler", "worker-0", "worker-1"]
    assert {i.role for i in infos} == {InstanceRole.scheduler, InstanceRole.worker}
    assert all(i.state in (InstanceState.pending, InstanceState.running) for i in infos)
    for info in infos:
        assert {k: info.tags[k] for k in BILLOW_TAGS} == {k: spec.tags[k] for k in BILLOW_TAGS}
        assert info.tags["team"] == "data"
        assert info.tags[tags.INSTANCE_NAME] == info.name
        assert info.tags[tags.ROLE] == info.role.value
        volumes = ec2.describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": [info.id]}]
        )["Volumes"]
        assert volumes
        for volume in volumes:
            vtags = tags_of(volume)
            assert all(vtags[k] == spec.tags[k] for k in BILLOW_TAGS), vtags
            assert vtags[tags.INSTANCE_NAME] == info.name and vtags[tags.ROLE] == info.role.value

    templates = ec2.describe_launch_templates(Filters=cluster_filter(spec))["LaunchTemplates"]
    assert [t["LaunchTemplateName"] for t in templates] == [f"billow-{spec.cluster_id}"]
    groups = ec2.describe_security_groups(Filters=cluster_filter(spec))["SecurityGroups"]
    assert len(groups) == 1
    for resource in (templates[0], groups[0]):
        assert all(tags_of(resource)[k] == spec.tags[k] for k in BILLOW_TAGS)

    fleets = [
        f
        for f in ec2.describe_fleets()["Fleets"]
        if tags_of(f).get(tags.CLUSTER) == spec.cluster_id
    ]
    assert len(fleets) == 3 and all(f["Type"] == "instant" for f in fleets)
    assert sorted(tags_of(f)[tags.INSTANCE_NAME] for f in fleets) == [
        "scheduler",
        "worker-0",
        "worker-1",
    ]
    assert all(tags_of(f)[tags.OWNER] == "u-alice" for f in fleets)

    data = ec2.describe_launch_template_versions(LaunchTemplateId=templates[0]["LaunchTemplateId"])[
        "LaunchTemplateVersions"
    ][0]["LaunchTemplateData"]
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert data["SecurityGroupIds"] == [groups[0]["GroupId"]]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert "UserData" not in data  # tokens never sit in the shared template

    assert {i.id for i in provider.list_deployment_instances()} == {i.id for i in infos}


def test_launch_is_idempotent_across_restarts(make_provider, make_spec):
    spec = make_spec()
    first = make_provider().launch(spec)
    assert make_provider().launch(spec).id == first.id  # fresh provider: no cache
    retry = spec.model_copy(
        update={"environment": {**spec.environment, "BILLOW_INSTANCE_TOKEN": "bit_retry"}}
    )
    assert make_provider().launch(retry).id == first.id  # reconciler retries mint new tokens
    assert [i.id for i in make_provider().describe(spec.cluster_id)] == [first.id]
    other = make_provider().launch(spec.model_copy(update={"name": "scheduler-1"}))
    assert other.id != first.id


def test_user_data_is_a_small_bootstrap_with_only_url_and_token(make_provider, make_spec, ec2):
    spec = make_spec("worker-0", InstanceRole.worker)
    info = make_provider().launch(spec)
    script = user_data_of(ec2, info.id)

    assert script.startswith("#!/bin/bash\n")
    assert len(script.encode()) < MAX_USER_DATA
    assert f"export BILLOW_CONTROL_URL={CONTROL_URL}" in script
    assert f"export BILLOW_INSTANCE_TOKEN={spec.environment['BILLOW_INSTANCE_TOKEN']}" in script
    assert "export BILLOW_ROLE=worker" in script
    assert f"export BILLOW_CLUSTER_ID={spec.cluster_id}" in script
    assert 'export BILLOW_HOST="${BILLOW_HOST:-0.0.0.0}"' in script
    assert "/v1/agent/kit" in script  # uv and the billow wheel come from the kit
    assert '"$B/agent/bin/python" -m billow.agent' in script
    assert "pip install billow" not in script and "billow[" not in script
    for secret in ("-----BEGIN", "CERTIFICATE", "PRIVATE KEY"):
        assert secret not in script
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)  # parses as bash


def test_user_data_quotes_hostile_values(make_provider, make_spec, ec2):
    spec = make_spec()
    hostile = "https://x.test/$(echo INJECTED)'\"`echo INJECTED`;"
    spec.environment["BILLOW_CONTROL_URL"] = hostile
    script = user_data_of(ec2, make_provider().launch(spec).id)
    export = next(
        line for line in script.splitlines() if line.startswith("export BILLOW_CONTROL_URL=")
    )
    shown = subprocess.run(
        ["bash", "-c", f'{export}; printf %s "$BILLOW_CONTROL_URL"'],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    assert shown == hostile


def test_security_group_opens_only_scheduler_and_dashboard(make_provider, make_spec, ec2):
    spec = make_spec()
    make_provider().launch(spec)
    group = ec2.describe_security_groups(Filters=cluster_filter(spec))["SecurityGroups"][0]
    perms = group["IpPermissions"]
    to_cidr = sorted(
        (p["IpProtocol"], p["FromPort"], p["ToPort"], r["CidrIp"])
        for p in perms
        for r in p.get("IpRanges", [])
    )
    assert to_cidr == [("tcp", 8786, 8786, ALLOWED), ("tcp", 8787, 8787, ALLOWED)]
    assert not any(p.get("Ipv6Ranges") or p.get("PrefixListIds") for p in perms)
    internal = [p for p in perms if p.get("UserIdGroupPairs")]
    assert len(internal) == 1 and internal[0]["IpProtocol"] == "-1"
    assert [g["GroupId"] for g in internal[0]["UserIdGroupPairs"]] == [group["GroupId"]]

    again = make_provider().ensure_network(spec.cluster_id, spec.tags)  # rules not duplicated
    assert again.security_group_id == group["GroupId"]
    regroup = ec2.describe_security_groups(GroupIds=[group["GroupId"]])["SecurityGroups"][0]
    assert len(regroup["IpPermissions"]) == len(perms)


def test_a_spec_brings_its_types_image_purchase_and_ingress(
    make_provider, make_spec, ec2, moto_url
):
    """What the core chose for a cluster (machine types, architecture, spot policy,
    allow_ingress_from) wins over the deployment's defaults; the image of an arm64
    cluster is the arm64 Amazon Linux 2023 from SSM when no AMI is pinned."""
    ssm = boto3.client("ssm", endpoint_url=moto_url, region_name=REGION)
    provider = make_provider(purchase="spot")
    provider.fleet.images = AmiResolver(ssm)  # what runtimes/aws wires: no BILLOW_AMI_ID
    spec = make_spec().model_copy(
        update={
            "vm_types": ["m7g.large", "c7g.large"],
            "arch": "arm64",
            "spot_policy": "on-demand",
            "ingress": ["198.51.100.7/32", "203.0.113.0/24"],
        }
    )
    info = provider.launch(spec)
    (instance,) = ec2.describe_instances(InstanceIds=[info.id])["Reservations"][0]["Instances"]
    assert instance["InstanceType"] == "m7g.large"
    fleets = [  # moto ignores DescribeFleets' Filters: every fleet of the server comes back
        f
        for f in ec2.describe_fleets()["Fleets"]
        if tags_of(f).get(tags.CLUSTER) == spec.cluster_id
    ]
    capacity = {f["TargetCapacitySpecification"]["DefaultTargetCapacityType"] for f in fleets}
    assert capacity == {"on-demand"}  # the cluster's policy, not the deployment's "spot"
    template = ec2.describe_launch_template_versions(
        LaunchTemplateName=f"billow-{spec.cluster_id}"
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    arm = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
    assert template["ImageId"] == ssm.get_parameter(Name=arm)["Parameter"]["Value"]
    group = ec2.describe_security_groups(Filters=cluster_filter(spec))["SecurityGroups"][0]
    opened = {
        (p["FromPort"], r["CidrIp"]) for p in group["IpPermissions"] for r in p.get("IpRanges", [])
    }
    assert opened == {
        (port, cidr) for port in (8786, 8787) for cidr in ("198.51.100.7/32", "203.0.113.0/24")
    }


def test_terminate_all_then_template_and_group_are_deleted(make_provider, make_spec, ec2):
    provider = make_provider()
    spec = launch_cluster(provider, make_spec)[0]
    infos = provider.describe(spec.cluster_id)

    provider.terminate([infos[1].id])  # scale down: cluster resources stay
    assert ec2.describe_launch_templates(Filters=cluster_filter(spec))["LaunchTemplates"]

    provider.terminate([i.id for i in infos] + ["i-0123456789abcdef0"])
    assert {i.state for i in provider.describe(spec.cluster_id)} == {InstanceState.terminated}
    assert ec2.describe_launch_templates(Filters=cluster_filter(spec))["LaunchTemplates"] == []
    assert ec2.describe_security_groups(Filters=cluster_filter(spec))["SecurityGroups"] == []
    assert provider.list_deployment_instances() == []

    provider.terminate([i.id for i in infos])  # again: nothing to do, no error
    assert provider.cleanup_cluster(spec.cluster_id) is True


def test_sweep_removes_leftovers_of_inactive_clusters_only(make_provider, make_spec, ec2):
    provider = make_provider()
    failed_early = make_spec(cluster=new_id("c"))  # network made, no instance ever started
    provider.ensure_network(failed_early.cluster_id, failed_early.tags)
    running = make_spec(cluster=new_id("c"))
    provider.launch(running)

    assert provider.sweep_cluster_resources({failed_early.cluster_id}.__contains__) == []
    assert provider.sweep_cluster_resources({running.cluster_id}.__contains__) == [
        failed_early.cluster_id
    ]
    leftover = ec2.describe_security_groups(Filters=cluster_filter(failed_early))
    assert leftover["SecurityGroups"] == []
    # an inactive cluster with a live instance is left alone (cleanup_cluster says not yet)
    assert provider.sweep_cluster_resources(set().__contains__) == []
    assert ec2.describe_security_groups(Filters=cluster_filter(running))["SecurityGroups"]


def test_terminate_ignores_instances_of_other_deployments(make_provider, make_spec, ec2, ami_id):
    foreign = ec2.run_instances(ImageId=ami_id, MinCount=1, MaxCount=1)["Instances"][0]
    make_provider().terminate([foreign["InstanceId"]])
    state = ec2.describe_instances(InstanceIds=[foreign["InstanceId"]])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"
    ec2.terminate_instances(InstanceIds=[foreign["InstanceId"]])


def test_ensure_network_twice_creates_one_vpc(make_provider, make_spec, ec2, deployment):
    spec_a, spec_b = make_spec(), make_spec(cluster=new_id("c"))
    first = make_provider().ensure_network(spec_a.cluster_id, spec_a.tags)
    second = make_provider().ensure_network(spec_a.cluster_id, spec_a.tags)
    third = make_provider().ensure_network(spec_b.cluster_id, spec_b.tags)

    vpcs = ec2.describe_vpcs(Filters=[{"Name": f"tag:{tags.DEPLOYMENT}", "Values": [deployment]}])[
        "Vpcs"
    ]
    assert [v["VpcId"] for v in vpcs] == [first.vpc_id]
    assert first == second
    assert third.vpc_id == first.vpc_id and third.subnet_ids == first.subnet_ids
    assert third.security_group_id != first.security_group_id
    subnets = ec2.describe_subnets(SubnetIds=first.subnet_ids)["Subnets"]
    assert len({s["AvailabilityZone"] for s in subnets}) == len(subnets) == 3
    assert all(s["MapPublicIpOnLaunch"] for s in subnets)
    igws = ec2.describe_internet_gateways(
        Filters=[{"Name": "attachment.vpc-id", "Values": [first.vpc_id]}]
    )["InternetGateways"]
    assert len(igws) == 1
    main = ec2.describe_route_tables(
        Filters=[
            {"Name": "vpc-id", "Values": [first.vpc_id]},
            {"Name": "association.main", "Values": ["true"]},
        ]
    )["RouteTables"][0]
    assert any(
        r.get("DestinationCidrBlock") == "0.0.0.0/0"
        and r.get("GatewayId") == igws[0]["InternetGatewayId"]
        for r in main["Routes"]
    )


def test_configured_subnets_and_group_are_reused_never_deleted(
    make_provider, make_spec, ec2, deployment
):
    vpc = ec2.create_vpc(CidrBlock="10.99.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.99.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(
        GroupName=f"mine-{deployment}", Description="mine", VpcId=vpc
    )["GroupId"]
    provider = make_provider(subnet_ids=[subnet], security_group_id=group)
    spec = make_spec()
    info = provider.launch(spec)

    instance = ec2.describe_instances(InstanceIds=[info.id])["Reservations"][0]["Instances"][0]
    assert instance["SubnetId"] == subnet
    assert (
        ec2.describe_vpcs(Filters=[{"Name": f"tag:{tags.DEPLOYMENT}", "Values": [deployment]}])[
            "Vpcs"
        ]
        == []
    )
    provider.terminate([info.id])
    assert ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]


@pytest.fixture
def no_spot_capacity(ec2: Any) -> Iterator[list[str]]:
    """Answer spot CreateFleet calls as AWS does when no pool has capacity; on-demand
    calls reach moto. Yields the capacity types requested, in order."""
    requested: list[str] = []

    def answer(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict] | None:
        capacity = params["body"]["TargetCapacitySpecification.DefaultTargetCapacityType"]
        requested.append(capacity)
        if capacity != "spot":
            return None
        return AWSResponse("https://ec2.test", 200, {}, None), {
            "FleetId": "fleet-00000000-0000-0000-0000-000000000000",
            "Errors": [
                {
                    "ErrorCode": "InsufficientInstanceCapacity",
                    "ErrorMessage": "There is no Spot capacity available",
                }
            ],
            "Instances": [],
        }

    ec2.meta.events.register("before-call.ec2.CreateFleet", answer, unique_id="no-spot")
    try:
        yield requested
    finally:
        ec2.meta.events.unregister("before-call.ec2.CreateFleet", unique_id="no-spot")


def test_spot_with_fallback_launches_spot_when_available(make_provider, make_spec, ec2):
    info = make_provider(purchase="spot_with_fallback").launch(make_spec())
    instance = ec2.describe_instances(InstanceIds=[info.id])["Reservations"][0]["Instances"][0]
    assert instance.get("InstanceLifecycle") == "spot"


def test_spot_with_fallback_retries_on_demand_without_spot_capacity(
    make_provider, make_spec, ec2, no_spot_capacity
):
    info = make_provider(purchase="spot_with_fallback").launch(make_spec())
    assert no_spot_capacity == ["spot", "on-demand"]
    instance = ec2.describe_instances(InstanceIds=[info.id])["Reservations"][0]["Instances"][0]
    assert instance.get("InstanceLifecycle") in (None, "on-demand")
    assert tags_of(instance)[tags.INSTANCE_NAME] == "scheduler"


def test_spot_only_raises_without_capacity(make_provider, make_spec, no_spot_capacity):
    spec = make_spec()
    with pytest.raises(EC2LaunchError, match="no Spot capacity") as caught:
        make_provider(purchase="spot").launch(spec)
    assert caught.value.codes == ["InsufficientInstanceCapacity"]
    assert no_spot_capacity == ["spot"]
    assert make_provider().describe(spec.cluster_id) == []


def test_tail_logs_reads_the_instance_stream(make_provider, logs, deployment):
    provider = make_provider()
    assert provider.tail_logs("i-0123456789abcdef0") == []  # no group yet
    group = f"/billow/{deployment}"
    logs.create_log_group(logGroupName=group)
    assert provider.tail_logs("i-0123456789abcdef0") == []  # no stream yet
    logs.create_log_stream(logGroupName=group, logStreamName="i-0123456789abcdef0")
    now_ms = int(time.time() * 1000)  # CloudWatch rejects events older than 14 days
    logs.put_log_events(
        logGroupName=group,
        logStreamName="i-0123456789abcdef0",
        logEvents=[{"timestamp": now_ms + n, "message": f"line {n}\n"} for n in range(10)],
    )
    assert provider.tail_logs("i-0123456789abcdef0", lines=3) == ["line 7", "line 8", "line 9"]
    assert provider.tail_logs("i-0123456789abcdef0", lines=0) == []
