"""A 1,000-worker cluster on EC2 (``moto_server``) is launched in bounded batches: each
reconcile step starts at most ``launch_batch`` instances, counted by EC2 itself
(DescribeInstances by the cluster's tag), never 1,001 at once.

Only the first steps run (each moto launch costs several API calls); the unit test
``tests/unit/test_quotas.py`` follows the same rule to the full 1,001 instances.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from billow_control.adapters.aws.ec2 import EC2Provider, EC2Settings
from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core import tags
from billow_control.core.accounts import Limits
from billow_control.core.models import ClusterRecord, ClusterRequest
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings

pytestmark = pytest.mark.integration

REGION = "us-east-1"
BATCH = 5


class NoOrchestrator:
    """The test drives ``reconcile`` itself, step by step."""

    def submit(self, cluster_id: str) -> None:
        pass

    def running_clusters(self) -> set[str]:
        return set()


class NoEvents:
    def publish(self, kind: str, cluster: ClusterRecord, detail: dict | None = None) -> None:
        pass


def test_a_thousand_workers_start_at_most_a_batch_per_step(moto_url: str, tmp_path: Path) -> None:
    ec2: Any = boto3.client("ec2", endpoint_url=moto_url, region_name=REGION)
    logs: Any = boto3.client("logs", endpoint_url=moto_url, region_name=REGION)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    deployment = f"batch-{uuid.uuid4().hex[:8]}"
    provider = EC2Provider(
        ec2,
        logs,
        deployment,
        EC2Settings(
            ami_id=image,
            instance_types=["t3.medium"],
            purchase="on-demand",
            allowed_cidr="203.0.113.7/32",
            log_group=f"/billow/{deployment}",
        ),
    )
    store = SqliteStore(tmp_path / "billow.db")
    plane = ControlPlane(
        Ports(
            store=store,
            provider=provider,
            orchestrator=NoOrchestrator(),
            secrets=FernetSecretBox.from_key_file(tmp_path / "key"),
            clock=ManualClock(),
            events=NoEvents(),
            settings=ControlSettings(deployment=deployment, launch_batch=BATCH),
        )
    )
    user, _ = plane.accounts.create_user("big")
    store.put_user(user.model_copy(update={"limits": Limits(cores=2000, instances=1001)}))
    user = store.get_user(user.id)
    assert user is not None
    cluster, _ = plane.create_cluster(user, ClusterRequest(n_workers=1000), None)

    def on_ec2() -> int:
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{tags.CLUSTER}", "Values": [cluster["id"]]}]
        )
        return sum(len(r["Instances"]) for page in pages for r in page["Reservations"])

    counts = []
    for _ in range(2):
        plane.lifecycle.reconcile(cluster["id"])
        counts.append(on_ec2())
    assert counts == [BATCH, 2 * BATCH]  # the scheduler is in the first batch
    provider.terminate([i.id for i in provider.describe(cluster["id"])])
