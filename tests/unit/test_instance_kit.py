"""``POST /v1/agent/kit``: what a bare instance downloads to start the agent, for its
one-time token, which the kit leaves unused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.errors import Conflict, Unauthorized
from billow_control.core.models import ClusterRequest, InstanceRole, User
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from billow_control.core.software import SoftwareSpec
from billow_control.runtimes.aws import AwsRuntime, ConfigError, control_settings
from tests.unit.fakes import MemoryBus, MemoryProvider, RecordingOrchestrator

pytestmark = pytest.mark.unit

UV_X86, UV_ARM = hashlib.sha256(b"uv x86").hexdigest(), hashlib.sha256(b"uv arm").hexdigest()
AGENT = hashlib.sha256(b"agent wheel").hexdigest()
AGENT_WHEEL = f"{AGENT}/billow-0.1.0-py3-none-any.whl"


class MemoryObjects:
    def __init__(self) -> None:
        self.objects: set[str] = set()

    def upload_url(self, sha256: str, size: int) -> str:
        return f"mem://put/{sha256}?size={size}"

    def upload_headers(self, sha256: str, size: int) -> dict[str, str]:
        return {}

    def download_url(self, sha256: str) -> str:
        return f"mem://get/{sha256}"

    def exists(self, sha256: str) -> bool:
        return sha256 in self.objects


class World:
    def __init__(self, tmp: Path, objects: MemoryObjects | None, **settings: object) -> None:
        self.clock = ManualClock()
        self.store = SqliteStore(tmp / "db.sqlite")
        self.provider = MemoryProvider(self.clock)
        self.plane = ControlPlane(
            Ports(
                store=self.store,
                provider=self.provider,
                orchestrator=RecordingOrchestrator(),
                secrets=FernetSecretBox.from_key_file(tmp / "key"),
                clock=self.clock,
                events=MemoryBus(),
                settings=ControlSettings.model_validate(settings),
                objects=objects,
            )
        )
        self.user = User(id="u-1", name="ann")
        self.store.put_user(self.user)

    def launch(self, request: ClusterRequest | None = None) -> dict[InstanceRole, str]:
        """Create a cluster, take its first reconcile step; each role's instance token."""
        cluster, _ = self.plane.create_cluster(self.user, request or ClusterRequest(), None)
        self.plane.lifecycle.reconcile(cluster["id"])
        tokens = {}
        for spec in self.provider.specs.values():
            if spec.cluster_id == cluster["id"]:
                tokens[spec.role] = spec.environment["BILLOW_INSTANCE_TOKEN"]
        return tokens


@pytest.fixture
def objects() -> MemoryObjects:
    return MemoryObjects()


@pytest.fixture
def world(tmp_path: Path, objects: MemoryObjects) -> World:
    return World(tmp_path, objects, uv_sha256=f"{UV_X86},aarch64={UV_ARM}", agent_wheel=AGENT_WHEEL)


def test_the_kit_names_uv_and_the_agent_wheel_and_leaves_the_token_unused(world: World) -> None:
    token = world.launch()[InstanceRole.scheduler]
    kit = world.plane.agents.kit(token)
    assert kit == {
        "uv": {
            "aarch64": {"sha256": UV_ARM, "url": f"mem://get/{UV_ARM}"},
            "x86_64": {"sha256": UV_X86, "url": f"mem://get/{UV_X86}"},
        },
        "wheel": {
            "sha256": AGENT,
            "filename": "billow-0.1.0-py3-none-any.whl",
            "url": f"mem://get/{AGENT}",
        },
        "pip_args": [],
        "python": ">=3.11",
    }
    assert world.plane.agents.kit(token) == kit  # asked again (a retried download)
    config = world.plane.agents.bootstrap(token)  # the token is still good for this
    assert config["role"] == "scheduler"
    with pytest.raises(Unauthorized, match="unknown, used or expired"):
        world.plane.agents.kit(token)


def test_the_kit_refuses_bad_expired_or_missing_tokens(world: World) -> None:
    token = world.launch()[InstanceRole.worker]
    with pytest.raises(Unauthorized, match="missing instance token"):
        world.plane.agents.kit(None)
    with pytest.raises(Unauthorized, match="unknown, used or expired"):
        world.plane.agents.kit("bit_not-a-token")
    world.clock.advance(world.plane.ports.settings.instance_token_ttl + 1)
    with pytest.raises(Unauthorized, match="unknown, used or expired"):
        world.plane.agents.kit(token)


def test_instances_of_a_stopping_cluster_are_told_to_exit(world: World) -> None:
    token = world.launch()[InstanceRole.worker]
    (record,) = world.store.list_clusters(None, active_only=True)
    world.plane.stop_cluster(world.user, record.id)
    with pytest.raises(Conflict, match="instance should exit"):
        world.plane.agents.kit(token)


def test_a_cluster_pinning_its_own_billow_wheel_bootstraps_with_it(
    world: World, objects: MemoryObjects
) -> None:
    own = hashlib.sha256(b"the client's billow").hexdigest()
    objects.objects.add(own)
    spec = SoftwareSpec(
        python="3.12.1",
        packages=[
            {"name": "distributed", "version": "2025.1.0"},
            {
                "name": "billow",
                "version": "0.2.0.dev1",
                "source": "wheel",
                "sha256": own,
                "filename": "billow-0.2.0.dev1-py3-none-any.whl",
            },
        ],
        index_url="https://mirror.test/simple",
        extra_index_urls=["https://extra.test/simple"],
    )
    token = world.launch(ClusterRequest(software=spec))[InstanceRole.scheduler]
    kit = world.plane.agents.kit(token)
    assert kit["wheel"] == {
        "sha256": own,
        "filename": "billow-0.2.0.dev1-py3-none-any.whl",
        "url": f"mem://get/{own}",
    }
    assert kit["pip_args"] == [
        "--index-url",
        "https://mirror.test/simple",
        "--extra-index-url",
        "https://extra.test/simple",
    ]
    assert kit["python"] == "3.12"
    # A spec that pins billow from an index still bootstraps with the agent wheel.
    pinned = spec.model_copy(
        update={"packages": [p for p in spec.packages if p.name != "billow"]}
    ).model_dump()
    pinned["packages"].append({"name": "billow", "version": "0.1.0"})
    other = world.launch(ClusterRequest(software=SoftwareSpec.model_validate(pinned)))
    assert world.plane.agents.kit(other[InstanceRole.worker])["wheel"]["sha256"] == AGENT


def test_a_deployment_without_a_kit_says_how_to_make_one(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    bare = World(tmp_path / "a", None)
    token = bare.launch()[InstanceRole.scheduler]
    with pytest.raises(Conflict, match="upload-instance-kit.sh"):
        bare.plane.agents.kit(token)
    (tmp_path / "b").mkdir()
    no_wheel = World(tmp_path / "b", MemoryObjects(), uv_sha256=UV_X86)
    token = no_wheel.launch()[InstanceRole.scheduler]
    with pytest.raises(Conflict, match="no agent wheel"):
        no_wheel.plane.agents.kit(token)


def test_kit_settings_from_the_environment_name_the_bad_variable() -> None:
    base = {"BILLOW_DEPLOYMENT": "d", "BILLOW_CONTROL_URL": "https://c.test"}
    settings = control_settings({**base, "BILLOW_UV_SHA256": UV_X86, "BILLOW_AGENT_WHEEL": ""})
    assert settings.uv_sha256 == {"x86_64": UV_X86} and settings.agent_wheel is None
    with pytest.raises(ConfigError, match="BILLOW_UV_SHA256: .*'arm64' is not one of"):
        control_settings({**base, "BILLOW_UV_SHA256": f"arm64={UV_ARM}"})
    with pytest.raises(ConfigError, match="BILLOW_AGENT_WHEEL: .*<sha256>/<wheel file name>"):
        control_settings({**base, "BILLOW_AGENT_WHEEL": "billow-0.1.0-py3-none-any.whl"})
    with pytest.raises(ValidationError, match="64 lower-case hex"):
        ControlSettings(uv_sha256={"x86_64": "abc"})


def test_the_aws_runtime_wires_s3_only_with_a_bucket_and_needs_it_for_a_kit() -> None:
    env = {
        "BILLOW_DEPLOYMENT": "d",
        "BILLOW_CONTROL_URL": "https://c.test",
        "BILLOW_TABLE": "billow-d-",
        "BILLOW_STATE_MACHINE_ARN": "arn:aws:states:us-east-1:1:stateMachine:m",
        "BILLOW_EVENT_BUS": "bus",
        "BILLOW_KMS_KEY_ID": "key",
        "BILLOW_AMI_ID": "ami-0123456789abcdef0",
        "BILLOW_INSTANCE_TYPES": "m6i.large",
    }
    assert AwsRuntime.from_env(env).ports.objects is None  # package sync of local code: refused
    with_bucket = AwsRuntime.from_env({**env, "BILLOW_ENV_BUCKET": "envs"})
    assert "objects" not in with_bucket.ports.built()  # built on first use, not before
    with pytest.raises(ConfigError, match="BILLOW_ENV_BUCKET, which is not set"):
        AwsRuntime.from_env({**env, "BILLOW_AGENT_WHEEL": AGENT_WHEEL})
