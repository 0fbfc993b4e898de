"""``infra/gcp/deploy.py --dry-run``: every resource of a GCP deployment is named, and
every role granted is one of the least-privilege roles the design allows, bound on the
narrowest resource GCP offers."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest

from billow_control.adapters.gcp.compute import compute_provider_from_env
from billow_control.adapters.gcp.firestore.documents import COLLECTIONS
from billow_control.adapters.gcp.gcs_object_store import gcs_object_store_from_env
from billow_control.adapters.gcp.kms_box import kms_box_from_env
from billow_control.runtimes.gcp import GcpRuntime
from tests.support.processes import ROOT

pytestmark = pytest.mark.unit

DEPLOY = ROOT / "infra" / "gcp" / "deploy.py"
D, PROJECT, REGION = "bw-test", "demo-project", "europe-west1"
PROJECT_ROLES = {
    "roles/datastore.user",  # Firestore has no per-collection IAM
    "roles/compute.instanceAdmin.v1",  # instances do not exist before they are created
    "roles/logging.viewer",  # instance logs, read for failures
    "roles/logging.logWriter",  # instances write their logs
}
RESOURCE_ROLES = {
    "roles/pubsub.publisher",
    "roles/cloudkms.cryptoKeyEncrypterDecrypter",
    "roles/iam.serviceAccountUser",
    "roles/iam.serviceAccountTokenCreator",
    "roles/storage.objectUser",  # on the deployment's bucket only
}
BUCKET = f"{PROJECT}-{D}-env"
UV = "x86_64=" + "a" * 64 + ",aarch64=" + "b" * 64


@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    out = subprocess.run(
        [sys.executable, str(DEPLOY), f"--project={PROJECT}", f"--region={REGION}",
         f"--deployment={D}", "--set", "BILLOW_GCP_MACHINE_FAMILIES=e2", "--set",
         f"BILLOW_UV_SHA256={UV}", "--dry-run"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line and not line.startswith("#")]
    assert all(line.startswith("gcloud ") for line in lines), lines
    return [shlex.split(line) for line in lines]


def named(commands: list[list[str]], *prefix: str) -> list[str]:
    """The resource names (first positional argument) of commands starting ``prefix``."""
    return [c[len(prefix) + 1] for c in commands if tuple(c[1 : len(prefix) + 1]) == prefix]


def flag(command: list[str], name: str) -> str | None:
    found = [a.split("=", 1)[1] for a in command if a.startswith(f"--{name}=")]
    return found[0] if found else None


def test_every_resource_is_named(commands: list[list[str]]) -> None:
    assert set(named(commands, "iam", "service-accounts", "create")) == {
        f"{D}-control", f"{D}-invoker", f"{D}-instance"
    }  # fmt: skip
    topics = {f"{D}-{t}" for t in ("reconcile", "events", "commands", "reaper")}
    assert set(named(commands, "pubsub", "topics", "create")) == topics
    functions = {f"{D}-{f}" for f in ("api", "reconcile", "commands", "reaper")}
    assert set(named(commands, "functions", "deploy")) == functions
    pushes = named(commands, "pubsub", "subscriptions", "create")
    assert set(pushes) == {f"{D}-{f}-push" for f in ("reconcile", "commands", "reaper")}
    assert named(commands, "scheduler", "jobs", "create", "pubsub") == [f"{D}-reaper"]
    assert named(commands, "kms", "keyrings", "create") == [D]
    assert named(commands, "kms", "keys", "create") == [f"{D}-secrets"]
    (bucket,) = [c for c in commands if c[1:4] == ["storage", "buckets", "create"]]
    assert bucket[4] == f"gs://{BUCKET}"
    assert {"--uniform-bucket-level-access", "--public-access-prevention"} <= set(bucket)
    assert any(c[1:4] == ["firestore", "databases", "create"] for c in commands)
    ttl = {
        flag(c, "collection-group") for c in commands if c[1:4] == ["firestore", "fields", "ttls"]
    }
    assert ttl == {f"{D}-clusters", f"{D}-cluster-keys", f"{D}-instance-credentials"}
    composite = [c for c in commands if c[1:4] == ["firestore", "indexes", "composite"]]
    assert [flag(c, "collection-group") for c in composite] == [f"{D}-environment-revisions"]
    active = [c for c in commands if c[1:5] == ["firestore", "indexes", "fields", "update"]]
    assert any(c[5] == "active" and flag(c, "collection-group") == f"{D}-clusters" for c in active)


def test_only_least_privilege_roles_on_the_narrowest_resource(commands: list[list[str]]) -> None:
    project_level = [c for c in commands if c[1:3] == ["projects", "add-iam-policy-binding"]]
    assert {flag(c, "role") for c in project_level} == PROJECT_ROLES
    roles = {flag(c, "role") for c in commands if flag(c, "role")}
    assert roles == PROJECT_ROLES | RESOURCE_ROLES
    assert not [r for r in roles if r in ("roles/owner", "roles/editor", "roles/viewer")]
    publishers = [c for c in commands if flag(c, "role") == "roles/pubsub.publisher"]
    assert {c[4] for c in publishers} == {f"{D}-reconcile", f"{D}-events"}  # not commands
    members = {flag(c, "member") for c in commands if flag(c, "member")}
    assert all(m and m.startswith("serviceAccount:") for m in members), members
    # The bucket: only the control account, on that bucket; instances use signed URLs.
    storage = [c for c in commands if (flag(c, "role") or "").startswith("roles/storage.")]
    assert [(c[4], flag(c, "member")) for c in storage] == [
        (f"gs://{BUCKET}", f"serviceAccount:{D}-control@{PROJECT}.iam.gserviceaccount.com")
    ]
    # Token creator: Pub/Sub on the invoker (OIDC pushes), the control account on itself
    # (signBlob for signed URLs), nothing else.
    creators = [c for c in commands if flag(c, "role") == "roles/iam.serviceAccountTokenCreator"]
    control = f"{D}-control@{PROJECT}.iam.gserviceaccount.com"
    assert {(c[4], flag(c, "member")) for c in creators} == {
        (f"{D}-invoker@{PROJECT}.iam.gserviceaccount.com",
         "serviceAccount:service-$(PROJECT_NUMBER)@gcp-sa-pubsub.iam.gserviceaccount.com"),
        (control, f"serviceAccount:{control}"),
    }  # fmt: skip
    invokers = [c for c in commands if c[1:3] == ["functions", "add-invoker-policy-binding"]]
    assert {c[3] for c in invokers} == {f"{D}-{f}" for f in ("reconcile", "commands", "reaper")}
    assert {flag(c, "member") for c in invokers} == {
        f"serviceAccount:{D}-invoker@{PROJECT}.iam.gserviceaccount.com"
    }


def test_only_the_api_is_public_and_functions_run_as_the_control_account(
    commands: list[list[str]],
) -> None:
    deploys = {c[3]: c for c in commands if c[1:3] == ["functions", "deploy"]}
    for name, command in deploys.items():
        public = "--allow-unauthenticated" in command
        assert public == (name == f"{D}-api"), name
        ingress = flag(command, "ingress-settings")
        assert ingress == ("all" if public else "internal-only"), name
        account = flag(command, "service-account")
        assert account == f"{D}-control@{PROJECT}.iam.gserviceaccount.com"
        assert flag(command, "entry-point") == name.removeprefix(f"{D}-")


def test_the_functions_environment_configures_the_runtime(commands: list[list[str]]) -> None:
    source = (ROOT / "functions" / "gcp.py").read_text()
    reconcile = next(c for c in commands if c[1:4] == ["functions", "deploy", f"{D}-reconcile"])
    env_flag = flag(reconcile, "set-env-vars") or ""
    assert env_flag.startswith("^|^")  # gcloud's other delimiter: a value has commas
    env = dict(item.split("=", 1) for item in env_flag[3:].split("|"))
    assert env["BILLOW_GCP_MACHINE_FAMILIES"] == "e2"  # --set passes through
    assert env["BILLOW_UV_SHA256"] == UV
    assert env["BILLOW_GCS_BUCKET"] == BUCKET
    env["BILLOW_CONTROL_URL"] = "https://api.example"
    runtime = GcpRuntime.from_env(env)  # raises ConfigError naming a missing variable
    assert runtime.settings.deployment == D
    assert runtime.clients.project == PROJECT
    # The provider and the secret box find every variable they need (no Google call;
    # endpoints on loopback so that the clients need no credentials).
    for api in ("COMPUTE", "LOGGING", "KMS"):
        env[f"BILLOW_GCP_{api}_ENDPOINT"] = "http://127.0.0.1:9"
    env["BILLOW_GCS_ENDPOINT"] = "http://127.0.0.1:9"
    provider = compute_provider_from_env(runtime.settings, env)
    assert provider.settings.zone == f"{REGION}-b"  # type: ignore[attr-defined]
    kms_box_from_env(env)
    store = gcs_object_store_from_env(PROJECT, env)
    assert store is not None and store.bucket.name == BUCKET
    assert runtime.ports.built() == []  # wiring builds no adapter, the store included
    for entry in ("api", "reconcile", "commands", "reaper"):
        assert re.search(rf"^def {entry}\(", source, re.MULTILINE), entry


def test_the_index_file_names_the_stores_collections() -> None:
    spec = json.loads((ROOT / "infra" / "gcp" / "firestore.indexes.json").read_text())
    groups = {i["collectionGroup"] for i in spec["indexes"] + spec["fieldOverrides"]}
    assert groups and {g.removeprefix("billow-") for g in groups} <= set(COLLECTIONS)
    active = [o for o in spec["fieldOverrides"] if o["fieldPath"] == "active"]
    assert active == [
        {
            "collectionGroup": "billow-clusters",
            "fieldPath": "active",
            "indexes": [{"order": "ASCENDING", "queryScope": "COLLECTION"}],
        }
    ]


def test_bad_arguments_are_refused_in_one_line() -> None:
    out = subprocess.run(
        [sys.executable, str(DEPLOY), "--project=p", "--region=r", "--deployment=Bad_Name",
         "--dry-run"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--deployment: 3-21 lower-case letters" in out.stderr
    assert "Traceback" not in out.stderr
