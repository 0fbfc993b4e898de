"""Providers report the lifetimes metering reads: EC2 from ``LaunchTime`` and the time in
``StateTransitionReason``, Compute Engine from ``creationTimestamp`` and
``lastStopTimestamp``, with the machine type, vCPUs, GPUs and spot purchase."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.cloud import compute_v1

from billow_control.adapters.aws.ec2.instances import instance_info as ec2_info
from billow_control.adapters.gcp.compute.instances import instance_info as gce_info
from billow_control.core.models import InstanceState

pytestmark = pytest.mark.unit

TAGS = [
    {"Key": "billow:cluster-id", "Value": "c-1"},
    {"Key": "billow:instance-name", "Value": "w-1"},
    {"Key": "billow:role", "Value": "worker"},
    {"Key": "billow:owner", "Value": "u-1"},
]


def _ec2(state: str, reason: str = "", **extra: object) -> dict:
    return {
        "InstanceId": "i-0abc",
        "State": {"Name": state},
        "Tags": TAGS,
        "LaunchTime": datetime(2025, 1, 31, 23, 0, tzinfo=UTC),
        "StateTransitionReason": reason,
        "InstanceType": "g5.xlarge",
        "CpuOptions": {"CoreCount": 2, "ThreadsPerCore": 2},
        **extra,
    }


def test_ec2_termination_time_comes_from_the_state_transition_reason() -> None:
    info = ec2_info(_ec2("terminated", "User initiated (2025-02-01 00:30:05 GMT)"))
    assert info is not None and info.state == InstanceState.terminated
    assert info.terminated_at == datetime(2025, 2, 1, 0, 30, 5, tzinfo=UTC)
    assert (info.machine_type, info.vcpus, info.spot) == ("g5.xlarge", 4, False)


def test_ec2_without_a_time_in_the_reason_leaves_it_to_the_meter() -> None:
    info = ec2_info(_ec2("terminated", "Server.SpotInstanceTermination", InstanceLifecycle="spot"))
    assert info is not None and info.terminated_at is None and info.spot is True
    running = ec2_info(_ec2("running", "User initiated (2025-02-01 00:30:05 GMT)"))
    assert running is not None and running.terminated_at is None


def test_gce_reports_stop_time_type_gpus_and_spot() -> None:
    instance = compute_v1.Instance(
        name="billow-c-1-w-1",
        status="TERMINATED",
        labels={"billow-cluster-id": "c-1", "billow-instance-name": "w-1", "billow-role": "worker"},
        creation_timestamp="2025-01-31T15:00:00.000-08:00",
        last_stop_timestamp="2025-01-31T16:30:00.000-08:00",
        machine_type="https://www.googleapis.com/compute/v1/projects/p/zones/z/machineTypes/g2-standard-4",
        guest_accelerators=[compute_v1.AcceleratorConfig(accelerator_count=1)],
        scheduling=compute_v1.Scheduling(provisioning_model="SPOT"),
    )
    info = gce_info(instance)
    assert info is not None
    assert info.launched_at == datetime(2025, 1, 31, 23, 0, tzinfo=UTC)
    assert info.terminated_at == datetime(2025, 2, 1, 0, 30, tzinfo=UTC)
    assert (info.machine_type, info.gpus, info.spot) == ("g2-standard-4", 1, True)
