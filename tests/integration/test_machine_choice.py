"""Requests turned into EC2 machine types, over the instance-type data moto_server serves
(``DescribeInstanceTypes``, the same for every region there): sizing, arm, GPUs, explicit
lists, the deployment's pool, and requests nothing satisfies. Also the default image per
architecture, from the public SSM parameters moto serves."""

from __future__ import annotations

from typing import Any

import pytest

from billow_control.adapters.aws.ec2 import AmiResolver, EC2MachineCatalog
from billow_control.core.errors import Invalid
from billow_control.core.models import ClusterRequest
from billow_control.core.placement import machine_types
from tests.support.aws import client

pytestmark = pytest.mark.integration

# (request fields, role, first choice or "!field: words of the 422")
TABLE: list[tuple[dict[str, Any], str, str]] = [
    ({}, "worker", "c7a.medium"),  # 1 vCPU, 2 GiB: the smallest of c/m/r
    ({}, "scheduler", "c7a.medium"),
    ({"worker_cpu": 4, "worker_memory": "16 GiB"}, "worker", "m5a.xlarge"),
    ({"scheduler_cpu": 2, "scheduler_memory": "8 GiB"}, "scheduler", "m5a.large"),
    ({"arm": True}, "worker", "c6g.medium"),
    ({"worker_cpu": 8, "worker_memory": "8 GiB", "arm": True}, "worker", "c6g.2xlarge"),
    ({"worker_gpu": 1}, "worker", "g6.xlarge"),
    ({"worker_gpu": 1}, "scheduler", "c7a.medium"),  # the scheduler never gets a GPU
    ({"worker_gpu": 4}, "worker", "g6.12xlarge"),
    ({"worker_gpu": 1, "arm": True}, "worker", "g5g.xlarge"),
    ({"worker_vm_types": ["m6i.large", "m5.large"]}, "worker", "m6i.large"),
    ({"scheduler_vm_types": ["t3.medium"]}, "scheduler", "t3.medium"),  # asked: burstable ok
    ({"worker_vm_types": ["zz9.huge"]}, "worker", "!worker_vm_types: does not exist"),
    (
        {"worker_cpu": 4, "worker_vm_types": ["t3.medium"]},
        "worker",
        "!worker_vm_types: has 2 vCPUs, fewer than 4",
    ),
    ({"arm": True, "worker_vm_types": ["m6i.large"]}, "worker", "!worker_vm_types: not arm64"),
    ({"worker_gpu": 1, "worker_vm_types": ["m6i.large"]}, "worker", "!worker_vm_types: 0 GPUs"),
    (
        {"scheduler_vm_types": ["g4dn.xlarge"]},
        "scheduler",
        "!scheduler_vm_types: never uses",
    ),
    (
        {"worker_cpu": 64, "worker_memory": "16 TiB"},
        "worker",
        "!worker_cpu: no machine type in this region has 64 vCPUs",
    ),
    ({"worker_gpu": 16}, "worker", "!worker_cpu: no machine type"),
]


@pytest.fixture(scope="module")
def catalog(serial_moto_url: str) -> EC2MachineCatalog:
    # The types of a region are read once per process (about 10 s on moto, which answers
    # all 1,395 in one page): the same server as the AWS handler and e2e tests shares it.
    return EC2MachineCatalog(client(serial_moto_url, "ec2"))


@pytest.mark.parametrize(("fields", "role", "expected"), TABLE)
def test_requests_become_machine_types(
    catalog: EC2MachineCatalog, fields: dict[str, Any], role: str, expected: str
) -> None:
    request = ClusterRequest(**fields)
    if expected.startswith("!"):
        field, _, words = expected[1:].partition(": ")
        with pytest.raises(Invalid) as refused:
            machine_types(catalog, request, role)
        assert refused.value.field == field and words in refused.value.message
        return
    chosen = machine_types(catalog, request, role)
    assert chosen[0] == expected, chosen
    types = catalog.types()
    arch = "arm64" if request.arm else "x86_64"
    gpus = request.worker_gpu if role == "worker" else 0
    for name in chosen:  # every candidate fits; GPUs only where asked
        t = types[name]
        assert arch in t.architectures and (t.gpus >= gpus) and (gpus > 0) == (t.gpus > 0)
        assert t.cores >= getattr(request, f"{role}_cpu")
    if not (request.worker_vm_types or request.scheduler_vm_types):
        assert len(chosen) == 5  # fallbacks for capacity, smallest first
        assert [types[n].cores for n in chosen] == sorted(types[n].cores for n in chosen)


def test_the_deployments_pool_limits_the_automatic_choice(serial_moto_url: str) -> None:
    pool = ["m5.large", "t3.medium", "m5.xlarge"]
    pooled = EC2MachineCatalog(client(serial_moto_url, "ec2"), pool)
    assert machine_types(pooled, ClusterRequest(), "worker") == [
        "t3.medium",
        "m5.large",
        "m5.xlarge",
    ]
    big = ClusterRequest(worker_cpu=4, worker_memory="8 GiB")
    assert machine_types(pooled, big, "worker") == ["m5.xlarge"]
    with pytest.raises(Invalid, match="BILLOW_INSTANCE_TYPES"):
        machine_types(pooled, ClusterRequest(worker_cpu=8), "worker")


def test_the_default_image_is_amazon_linux_2023_of_the_architecture(moto_url: str) -> None:
    ssm = client(moto_url, "ssm")
    images = AmiResolver(ssm)
    x86, arm = images.image_for("x86_64"), images.image_for("arm64")
    prefix = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-"
    assert x86 == ssm.get_parameter(Name=prefix + "x86_64")["Parameter"]["Value"]
    assert arm == ssm.get_parameter(Name=prefix + "arm64")["Parameter"]["Value"]
    assert x86.startswith("ami-") and x86 != arm
    assert AmiResolver(ssm, "ami-0123456789abcdef0").image_for("arm64") == "ami-0123456789abcdef0"
