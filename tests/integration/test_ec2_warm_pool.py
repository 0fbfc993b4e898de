"""The EC2 warm pool of stopped instances against a real ``moto_server`` (EC2 and
DynamoDB: the claims live in a table shaped like the deployment's idempotency table).

What moto cannot show, and how these tests stand in for it:

* nothing boots: a pool instance's user data (prepare the kit, power off) never runs, so
  each test stops the pool instances itself with ``StopInstances`` where a real one would
  power itself off (``InstanceInitiatedShutdownBehavior=stop``);
* moto 5.2 reads ``ModifyInstanceAttribute``'s user data blob wrongly:
  ``tests.support.aws.moto_user_data_quirk`` adapts the test's client to it;
* cloud-init's per-boot hook, the boot time a pooled start saves, and IAM are not
  modelled (docs/warm-pool.md).
"""

from __future__ import annotations

import base64
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from billow_control.adapters.aws.ec2 import EC2Provider, EC2Settings, render_user_data
from billow_control.adapters.aws.ec2.pool_user_data import deployment_kit
from billow_control.adapters.aws.pool_claims import DynamoPoolClaims
from billow_control.core import tags
from billow_control.core.models import InstanceRole, InstanceSpec, InstanceState, new_id
from tests.support.aws import amazon_linux_image, moto_user_data_quirk

pytestmark = pytest.mark.integration

REGION = "us-east-1"
CONTROL_URL = "https://control.example.test/prod"
KIT = deployment_kit(
    {"x86_64": "a" * 64}, "b" * 64 + "/billow-0-py3-none-any.whl", lambda s: f"https://s3/{s}"
)


@pytest.fixture(scope="module")
def ec2(moto_url: str) -> Any:
    return moto_user_data_quirk(boto3.client("ec2", endpoint_url=moto_url, region_name=REGION))


@pytest.fixture(scope="module")
def claims_table(serial_moto_url: str) -> Iterator[tuple[Any, str]]:
    """The claims' table, on the moto server that serves one request at a time: the
    threaded one applies a transaction as a series of writes (``tests/conftest.py``),
    where DynamoDB applies it atomically."""
    dynamodb = boto3.client("dynamodb", endpoint_url=serial_moto_url, region_name=REGION)
    name = f"pool-idempotency-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    yield dynamodb, name
    dynamodb.delete_table(TableName=name)


@pytest.fixture(scope="module")
def ami_id(ec2: Any) -> str:
    return amazon_linux_image(ec2)


@pytest.fixture
def deployment() -> str:
    return f"pool-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_provider(
    ec2: Any, moto_url: str, ami_id: str, deployment: str, claims_table: tuple[Any, str]
) -> Callable[..., EC2Provider]:
    logs = boto3.client("logs", endpoint_url=moto_url, region_name=REGION)

    def make(size: int = 1, **overrides: Any) -> EC2Provider:
        settings = EC2Settings(
            ami_id=ami_id,
            instance_types=["t3.medium", "m5.large"],
            purchase=overrides.pop("purchase", "on-demand"),
            allowed_cidr="203.0.113.7/32",
            log_group=f"/billow/{deployment}",
            warm_pool_size=size,
            **overrides,
        )
        claims = DynamoPoolClaims(*claims_table)
        return EC2Provider(ec2, logs, deployment, settings, None, claims, lambda: KIT)

    return make


def make_spec(deployment: str, name: str = "scheduler", **fields: Any) -> InstanceSpec:
    cid = fields.pop("cluster_id", None) or new_id("c")
    role = InstanceRole.scheduler if name == "scheduler" else InstanceRole.worker
    return InstanceSpec(
        cluster_id=cid,
        name=name,
        role=role,
        cpu=2,
        memory="4 GiB",
        tags={tags.CLUSTER: cid, tags.DEPLOYMENT: deployment, tags.OWNER: "u-alice", "team": "x"},
        environment={
            "BILLOW_CONTROL_URL": CONTROL_URL,
            "BILLOW_INSTANCE_TOKEN": f"bit_{uuid.uuid4().hex}",
            "BILLOW_CLUSTER_ID": cid,
            "BILLOW_ROLE": role.value,
        },
        **fields,
    )


def describe(ec2: Any, instance_id: str) -> dict[str, Any]:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def attribute(ec2: Any, instance_id: str, name: str) -> Any:
    answer = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute=name)
    key = name[0].upper() + name[1:]
    return answer[key]["Value"]


def user_data(ec2: Any, instance_id: str) -> str:
    return base64.b64decode(attribute(ec2, instance_id, "userData")).decode()


def pool_ready(provider: EC2Provider, ec2: Any) -> list[str]:
    """Refill, then stop the new instances: what their own script does on EC2."""
    ids = provider.refill_pool()
    if ids:
        ec2.stop_instances(InstanceIds=ids)
    return ids


def volume_tags(ec2: Any, instance_id: str) -> list[dict[str, str]]:
    volumes = ec2.describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]
    )["Volumes"]
    return [tags_of(v) for v in volumes]


def test_refill_keeps_size_stopped_instances_with_pool_tags_only(make_provider, ec2, deployment):
    provider = make_provider(size=5)
    first = provider.refill_pool()
    assert len(first) == 4  # a bounded batch per pass
    second = provider.refill_pool()
    assert len(second) == 1 and provider.refill_pool() == []
    ids = first + second
    key = f"t3.medium/x86_64/{provider.fleet.image('x86_64')}"
    for instance_id in ids:
        inst = describe(ec2, instance_id)
        itags = tags_of(inst)
        assert itags[tags.DEPLOYMENT] == deployment and itags[tags.POOL] == key
        assert not {tags.CLUSTER, tags.OWNER, tags.INSTANCE_NAME} & set(itags)
        assert inst["InstanceType"] == "t3.medium"
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        assert attribute(ec2, instance_id, "instanceInitiatedShutdownBehavior") == "stop"
        assert all(t[tags.POOL] == key for t in volume_tags(ec2, instance_id))
        script = user_data(ec2, instance_id)
        assert not [line for line in script.splitlines() if line.startswith("export BILLOW_INS")]
        assert "bit_" not in script and "BILLOW_ROLE" not in script
        assert "/var/lib/cloud/scripts/per-boot/billow-bootstrap.sh" in script
        assert "BILLOW_CLUSTER_ID" not in script and "/v1/agent/kit" not in script
        subprocess.run(["bash", "-n"], input=script.encode(), check=True)
    groups = {g["GroupId"] for i in ids for g in describe(ec2, i)["SecurityGroups"]}
    assert len(groups) == 1
    group = ec2.describe_security_groups(GroupIds=list(groups))["SecurityGroups"][0]
    assert group["GroupName"] == f"billow-{deployment}-pool" and group["IpPermissions"] == []
    # The orphan sweep's listing and the resource sweep never see the pool.
    assert provider.list_deployment_instances() == []
    assert provider.sweep_cluster_resources(lambda cluster_id: False) == []
    assert ec2.describe_security_groups(GroupIds=list(groups))["SecurityGroups"]
    # A smaller size retires the extra stopped ones.
    ec2.stop_instances(InstanceIds=ids)
    assert make_provider(size=2).refill_pool() == []
    alive = [i for i in ids if describe(ec2, i)["State"]["Name"] == "stopped"]
    assert len(alive) == 2


def test_launch_takes_a_stopped_instance_for_the_cluster_and_starts_it(
    make_provider, ec2, deployment
):
    provider = make_provider(size=1)
    [pooled] = pool_ready(provider, ec2)
    spec = make_spec(deployment)
    info = provider.launch(spec)
    assert info.id == pooled and info.state == InstanceState.pending
    inst = describe(ec2, pooled)
    assert inst["State"]["Name"] in ("pending", "running")
    itags = tags_of(inst)
    assert tags.POOL not in itags
    assert itags[tags.CLUSTER] == spec.cluster_id and itags[tags.OWNER] == "u-alice"
    assert itags[tags.INSTANCE_NAME] == "scheduler" and itags[tags.ROLE] == "scheduler"
    assert itags["team"] == "x"
    for vtags in volume_tags(ec2, pooled):
        assert tags.POOL not in vtags and vtags[tags.CLUSTER] == spec.cluster_id
    assert user_data(ec2, pooled) == render_user_data(spec.environment, provider.settings)
    assert f"export BILLOW_INSTANCE_TOKEN={spec.environment['BILLOW_INSTANCE_TOKEN']}" in (
        user_data(ec2, pooled)
    )
    assert attribute(ec2, pooled, "instanceInitiatedShutdownBehavior") == "terminate"
    cluster_group = ec2.describe_security_groups(
        Filters=[{"Name": f"tag:{tags.CLUSTER}", "Values": [spec.cluster_id]}]
    )["SecurityGroups"]
    assert [g["GroupId"] for g in inst["SecurityGroups"]] == [cluster_group[0]["GroupId"]]
    assert [i.id for i in provider.describe(spec.cluster_id)] == [pooled]
    assert provider.launch(spec).id == pooled  # the launch is idempotent
    # The pool is empty now: the next instance starts cold, through a fleet.
    worker = make_spec(deployment, "worker-0", cluster_id=spec.cluster_id)
    cold = provider.launch(worker)
    assert cold.id != pooled
    assert tags_of(describe(ec2, cold.id))[tags.INSTANCE_NAME] == "worker-0"


def test_two_clusters_racing_for_one_pooled_instance(make_provider, ec2, deployment):
    provider = make_provider(size=1)
    [pooled] = pool_ready(provider, ec2)
    specs = [make_spec(deployment), make_spec(deployment)]
    results: dict[str, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def launch(spec: InstanceSpec) -> None:
        try:
            barrier.wait(10)
            # One provider per thread, as two Lambda containers have.
            results[spec.cluster_id] = make_provider(size=1).launch(spec).id
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=launch, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    ids = [results[s.cluster_id] for s in specs]
    assert ids.count(pooled) == 1 and len(set(ids)) == 2
    owner = tags_of(describe(ec2, pooled))[tags.CLUSTER]
    assert owner in {s.cluster_id for s in specs}
    # The cluster that took it ends: the instance goes with it (and the cluster's group,
    # not the pool's), and the pool gets a new instance.
    pool_group = provider.network.ensure_pool_group()[1]
    provider.terminate([pooled])
    assert describe(ec2, pooled)["State"]["Name"] in ("shutting-down", "terminated")
    assert not ec2.describe_security_groups(
        Filters=[{"Name": f"tag:{tags.CLUSTER}", "Values": [owner]}]
    )["SecurityGroups"]
    assert ec2.describe_security_groups(GroupIds=[pool_group])["SecurityGroups"]
    [fresh] = pool_ready(provider, ec2)
    assert fresh not in ids
    assert [g["GroupId"] for g in describe(ec2, fresh)["SecurityGroups"]] == [pool_group]
    later = provider.launch(make_spec(deployment))
    assert later.id == fresh


def test_two_launches_of_one_spec_at_once_take_one_instance(make_provider, ec2, deployment):
    """A launch retried while the first attempt still runs: both end on the instance the
    spec's token claimed, whichever candidate each tried first."""
    provider = make_provider(size=3)
    pooled = pool_ready(provider, ec2)
    spec = make_spec(deployment)
    results: list[str] = []
    barrier = threading.Barrier(2)

    def launch() -> None:
        barrier.wait(10)
        results.append(make_provider(size=3).launch(spec).id)

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2 and results[0] == results[1] and results[0] in pooled
    mine = [i for i in pooled if tags_of(describe(ec2, i)).get(tags.CLUSTER) == spec.cluster_id]
    assert mine == [results[0]]
    others = [i for i in pooled if i != results[0]]
    assert all(describe(ec2, i)["State"]["Name"] == "stopped" for i in others)


@pytest.mark.parametrize(
    "operation", ["CreateTags", "DeleteTags", "ModifyInstanceAttribute", "StartInstances"]
)
def test_a_retried_launch_after_a_crash_converges_on_the_same_instance(
    make_provider, ec2, deployment, operation
):
    """The reconcile function dies right before each call of a take (after the claim, and
    after every call before this one); a new container retries the same spec."""
    provider = make_provider(size=2)
    pooled = pool_ready(provider, ec2)
    spec = make_spec(deployment)

    def crash(**_: Any) -> None:
        raise ConnectionError(f"the reconcile function died before {operation}")

    event = f"before-call.ec2.{operation}"
    ec2.meta.events.register(event, crash, unique_id="crash")
    try:
        with pytest.raises(ConnectionError):
            provider.launch(spec)
    finally:
        ec2.meta.events.unregister(event, unique_id="crash")
    stopped = [i for i in pooled if describe(ec2, i)["State"]["Name"] == "stopped"]
    assert sorted(stopped) == sorted(pooled)  # nothing started yet
    if operation == "CreateTags":
        assert not [i for i in pooled if tags.CLUSTER in tags_of(describe(ec2, i))]
        [claimed] = [i for i in pooled if provider.pool.claims.claimed_at(i) is not None]
    else:
        [claimed] = [i for i in pooled if tags.CLUSTER in tags_of(describe(ec2, i))]
    retried = spec.model_copy(
        update={"environment": {**spec.environment, "BILLOW_INSTANCE_TOKEN": "bit_retry"}}
    )
    info = make_provider(size=2).launch(retried)  # a new container, the same client_token
    assert info.id == claimed
    assert describe(ec2, claimed)["State"]["Name"] in ("pending", "running")
    assert "export BILLOW_INSTANCE_TOKEN=bit_retry" in user_data(ec2, claimed)
    [other] = [i for i in pooled if i != claimed]
    assert tags.POOL in tags_of(describe(ec2, other))  # the retry took nothing else
    assert tags.CLUSTER not in tags_of(describe(ec2, other))


def test_no_stopped_instance_or_not_poolable_starts_cold(make_provider, ec2, deployment):
    provider = make_provider(size=1)
    [preparing] = provider.refill_pool()  # still running its kit script: not takeable
    cold = provider.launch(make_spec(deployment))
    assert cold.id != preparing
    assert tags.POOL in tags_of(describe(ec2, preparing))
    ec2.stop_instances(InstanceIds=[preparing])
    spot = provider.launch(make_spec(deployment, spot_policy="spot"))
    other_type = provider.launch(make_spec(deployment, vm_types=["m5.large"]))
    arm = provider.launch(make_spec(deployment, arch="arm64", vm_types=["t3.medium"]))
    assert preparing not in {spot.id, other_type.id, arm.id}
    assert tags_of(describe(ec2, preparing))[tags.POOL]
    bogus = make_provider(size=1, warm_pool_types=["zz9.nonsense"])
    assert bogus.refill_pool() == []  # a type the region lacks: no pool, launches still work
    assert bogus.launch(make_spec(deployment, vm_types=["zz9.nonsense", "t3.medium"])).id
    off = make_provider(size=0)
    assert off.refill_pool() == [] and off.launch(make_spec(deployment)).id != preparing


def test_refill_retires_an_abandoned_claim(make_provider, ec2, deployment, claims_table):
    """A launch that claimed a pool instance and died before tagging it, never retried:
    after ``ABANDONED_CLAIM`` the refill terminates it and launches a replacement."""
    provider = make_provider(size=1)
    [pooled] = pool_ready(provider, ec2)
    dynamodb, table = claims_table
    long_ago = str(int(time.time()) - 3600)
    dynamodb.put_item(
        TableName=table,
        Item={
            "id": {"S": f"billow.pool#instance#{pooled}"},
            "holder": {"S": "c-gone-scheduler"},
            "claimed_at": {"N": long_ago},
        },
    )
    assert provider.launch(make_spec(deployment)).id != pooled  # claimed: not takeable
    [fresh] = provider.refill_pool()
    assert fresh != pooled
    assert describe(ec2, pooled)["State"]["Name"] in ("shutting-down", "terminated")
