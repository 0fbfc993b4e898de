"""The Compute Engine adapter's pure parts: the tag-to-label mapping, the machine-type
choice table, the startup script and the settings read from the environment."""

from __future__ import annotations

import uuid

import pytest

from billow_control.adapters.aws.ec2 import EC2Settings, render_user_data
from billow_control.adapters.gcp.compute import (
    GceConfigError,
    GceSettings,
    MachineType,
    MachineTypeError,
    choose,
    gce_settings_from_env,
    instance_name,
    label_filter,
    labels_of_tags,
    render_startup_script,
    request_id,
    tags_of_labels,
)
from billow_control.adapters.instance_bootstrap import BOOTSTRAP_ENV, FETCH_KIT
from billow_control.core import tags
from billow_control.core.models import InstanceRole
from billow_control.core.settings import ControlSettings

pytestmark = pytest.mark.unit

ENV = {
    "BILLOW_CONTROL_URL": "https://c.test",
    "BILLOW_INSTANCE_TOKEN": "bit_onetime",
    "BILLOW_ROLE": "worker",
    "BILLOW_CLUSTER_ID": "c-0123456789abcdef",
}
SETTINGS = GceSettings(project="my-project", zone="us-central1-a", deployment="prod")
TYPES = [
    MachineType("e2-small", 2, 2048, shared_cpu=True),
    MachineType("e2-standard-2", 2, 8192),
    MachineType("e2-standard-4", 4, 16384),
    MachineType("e2-standard-8", 8, 32768),
    MachineType("e2-highmem-2", 2, 16384),
    MachineType("e2-highmem-16", 16, 131072),
    MachineType("e2-standard-32", 32, 131072),
    MachineType("n2-standard-64", 64, 262144),
    MachineType("n2-standard-4-old", 4, 16384, deprecated=True),
    MachineType("n1-standard-4", 4, 15360),
    MachineType("n1-standard-16", 16, 61440),
    MachineType("g2-standard-4", 4, 16384, accelerators=(("nvidia-l4", 1),)),
    MachineType("a2-highgpu-1g", 12, 87040, accelerators=(("nvidia-tesla-a100", 1),)),
]


# -- labels -----------------------------------------------------------------------------


def test_billow_tags_map_to_labels_exactly_and_read_back() -> None:
    ours = tags.cluster_tags("c-0123456789abcdef", "u-42", "prod")
    ours |= {tags.INSTANCE_NAME: "worker-3", tags.ROLE: "worker"}
    labels = labels_of_tags(ours)
    assert labels == {
        "billow-cluster-id": "c-0123456789abcdef",
        "billow-deployment": "prod",
        "billow-owner": "u-42",
        "billow-instance-name": "worker-3",
        "billow-role": "worker",
    }
    assert tags_of_labels(labels) == ours


def test_user_tags_are_folded_to_the_label_rules_and_never_win_over_billows() -> None:
    user = {"Team": "Data Eng", "9lives": "x" * 80, "billow-owner": "mallory"}
    labels = labels_of_tags(tags.cluster_tags("c-1", "u-42", "prod", user))
    assert labels["team"] == "data_eng"
    assert labels["t9lives"] == "x" * 63  # keys start with a letter; values at most 63
    assert labels["billow-owner"] == "u-42"
    assert all(len(k) <= 63 and len(v) <= 63 for k, v in labels.items())


def test_a_billow_value_that_is_not_a_label_value_is_refused_naming_the_tag() -> None:
    with pytest.raises(ValueError, match="billow:cluster-id"):
        labels_of_tags({tags.CLUSTER: "C-UPPER"})


def test_label_filter_always_names_the_deployment() -> None:
    assert label_filter("prod") == '(labels.billow-deployment = "prod")'
    assert label_filter("prod", "c-1", **{"billow-role": "worker"}) == (
        '(labels.billow-deployment = "prod") AND (labels.billow-cluster-id = "c-1") '
        'AND (labels.billow-role = "worker")'
    )


def test_instance_names_are_valid_and_stable() -> None:
    assert instance_name("c-0123456789abcdef", "worker-12") == "billow-c-0123456789abcdef-worker-12"
    odd = instance_name("c-0123456789abcdef", "Worker_" + "x" * 80)
    assert odd == instance_name("c-0123456789abcdef", "Worker_" + "x" * 80)
    assert len(odd) <= 63 and odd.islower() and "_" not in odd


def test_request_ids_are_uuids_stable_per_token_and_capacity() -> None:
    first = request_id("c-1-worker-0", "SPOT")
    assert first == request_id("c-1-worker-0", "SPOT")
    assert first != request_id("c-1-worker-0", "STANDARD")
    assert uuid.UUID(first).version == 4


# -- machine types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "memory", "expected"),
    [
        (1, "2 GiB", "e2-standard-2"),  # never the shared-core e2-small
        (2, "8 GiB", "e2-standard-2"),
        (2, "12 GiB", "e2-highmem-2"),
        (3, "4 GiB", "e2-standard-4"),
        (16, "100 GiB", "e2-highmem-16"),
        (48, "64 GiB", "n2-standard-64"),  # beyond e2: the next family
    ],
)
def test_machine_type_choice(cpu: int, memory: str, expected: str) -> None:
    choice = choose(TYPES, cpu=cpu, memory=memory, role=InstanceRole.worker, families=["e2", "n2"])
    assert (choice.machine_type, choice.attach) == (expected, ())


def test_gpus_are_attached_to_n1_or_come_with_the_type() -> None:
    t4 = choose(
        TYPES,
        cpu=4,
        memory="15 GiB",
        role=InstanceRole.worker,
        families=["e2"],
        gpu=("nvidia-tesla-t4", 2),
    )
    assert (t4.machine_type, t4.attach) == ("n1-standard-4", (("nvidia-tesla-t4", 2),))
    l4 = choose(
        TYPES,
        cpu=2,
        memory="8 GiB",
        role=InstanceRole.worker,
        families=["e2"],
        gpu=("nvidia-l4", 1),
    )
    assert (l4.machine_type, l4.attach) == ("g2-standard-4", ())


@pytest.mark.parametrize(
    ("cpu", "memory", "gpu", "field", "detail"),
    [
        (96, "8 GiB", None, "worker_cpu", "the most CPUs is 64"),
        (2, "2 TiB", None, "worker_memory", "the most memory is 256 GiB"),
        (32, "400 GiB", ("nvidia-tesla-t4", 1), "worker_gpu", "worker_gpu=nvidia-tesla-t4:1"),
    ],
)
def test_an_impossible_request_names_the_field(
    cpu: int, memory: str, gpu: tuple[str, int] | None, field: str, detail: str
) -> None:
    with pytest.raises(MachineTypeError, match=detail) as caught:
        choose(
            TYPES,
            cpu=cpu,
            memory=memory,
            role=InstanceRole.worker,
            families=["e2", "n2"],
            gpu=gpu,
            zone="us-central1-a",
        )
    assert caught.value.field == field
    assert field in str(caught.value) and "us-central1-a" in str(caught.value)


# -- startup script ---------------------------------------------------------------------


def test_startup_script_carries_only_the_bootstrap_variables() -> None:
    extra = {"BILLOW_SOFTWARE_KEY": "k", "GOOGLE_APPLICATION_CREDENTIALS": "/secret.json"}
    script = render_startup_script({**ENV, **extra}, SETTINGS)
    exported = [line.split("=", 1)[0][len("export ") :] for line in script.splitlines()]
    exported = [name for name in exported if name.startswith("BILLOW_") and "${" not in name]
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in script and "/secret.json" not in script
    assert "BILLOW_SOFTWARE_KEY" not in script
    assert all(f"export {k}=" in script for k in BOOTSTRAP_ENV)
    assert script.count("bit_onetime") == 1  # the one secret: the one-time token
    # The Ops Agent labels each entry with the cluster and role.
    assert "static_value: c-0123456789abcdef" in script and "static_value: worker" in script


def test_both_clouds_run_the_same_kit_fetch() -> None:
    ec2 = EC2Settings(
        ami_id="ami-0123456789abcdef0", instance_types=["m6i.large"], allowed_cidr="0.0.0.0/0"
    )
    assert FETCH_KIT.strip() in render_startup_script(ENV, SETTINGS)
    assert FETCH_KIT.strip() in render_user_data(ENV, ec2)


@pytest.mark.parametrize("missing", BOOTSTRAP_ENV)
def test_startup_script_needs_every_bootstrap_variable(missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        render_startup_script({k: v for k, v in ENV.items() if k != missing}, SETTINGS)


def test_a_cluster_id_cannot_inject_into_the_script() -> None:
    with pytest.raises(ValueError, match="label value"):
        render_startup_script({**ENV, "BILLOW_CLUSTER_ID": "c-1\nrm -rf /"}, SETTINGS)


# -- settings ---------------------------------------------------------------------------

BASE_ENV = {"BILLOW_GCP_PROJECT": "my-project", "BILLOW_GCP_ZONE": "europe-west4-b"}


def control(deployment: str = "prod") -> ControlSettings:
    return ControlSettings(deployment=deployment, control_url="https://c.test")


def test_settings_from_the_environment() -> None:
    env = {
        **BASE_ENV,
        "BILLOW_PURCHASE": "on-demand",
        "BILLOW_GCP_WORKER_GPU": "nvidia-tesla-t4:2",
        "BILLOW_GCP_MACHINE_FAMILIES": "n2, e2",
    }
    gce = gce_settings_from_env(control(), env)
    assert (gce.purchase, gce.worker_gpu, gce.machine_families) == (
        "standard",
        ("nvidia-tesla-t4", 2),
        ["n2", "e2"],
    )
    assert (gce.deployment, gce.region) == ("prod", "europe-west4")


@pytest.mark.parametrize(
    ("env", "deployment", "named"),
    [
        ({"BILLOW_GCP_ZONE": "us-central1-a"}, "prod", "BILLOW_GCP_PROJECT"),
        ({**BASE_ENV, "BILLOW_GCP_ZONE": "us-central1"}, "prod", "BILLOW_GCP_ZONE"),
        (BASE_ENV, "Prod_1", "BILLOW_DEPLOYMENT"),
        ({**BASE_ENV, "BILLOW_PURCHASE": "cheap"}, "prod", "BILLOW_PURCHASE"),
        ({**BASE_ENV, "BILLOW_GCP_WORKER_GPU": "t4:x"}, "prod", "BILLOW_GCP_WORKER_GPU"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], deployment: str, named: str) -> None:
    with pytest.raises(GceConfigError, match=named):
        gce_settings_from_env(control(deployment), env)
