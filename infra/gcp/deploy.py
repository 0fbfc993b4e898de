#!/usr/bin/env python3
"""Deploy Billow's GCP control plane into one project: the one command a GCP admin runs.

    python infra/gcp/deploy.py --project my-project --region europe-west1 \\
        --deployment billow-prod [--set BILLOW_<VAR>=value ...] [--dry-run]

It runs ``gcloud`` (authenticated as someone allowed to create the resources below) and
creates, or leaves as they are when they exist:

* APIs: Cloud Functions, Cloud Run, Cloud Build, Artifact Registry, Firestore, Pub/Sub,
  Cloud Scheduler, Cloud KMS, Compute Engine, Cloud Logging, Cloud Storage, IAM and IAM
  credentials (``signBlob``);
* service accounts: ``<d>-control`` (the functions), ``<d>-invoker`` (Pub/Sub pushes and
  nothing else), ``<d>-instance`` (cluster VMs: writes logs, nothing else);
* the Firestore database, its composite index, index exemptions and TTL policies
  (``firestore.indexes.json``, collection names prefixed with ``<d>-``);
* a KMS key ring and key sealing cluster secrets (rotated every 90 days);
* the bucket ``<project>-<d>-env`` (uniform access, public access prevented) holding the
  instance kit and users' wheels (``BILLOW_GCS_BUCKET``); nobody reads or writes it but
  ``<d>-control`` and holders of the URLs it signs (through IAM ``signBlob`` as itself:
  ``iam.serviceAccountTokenCreator`` on itself only);
* topics ``<d>-reconcile``, ``<d>-events``, ``<d>-commands``, ``<d>-reaper``;
* functions (2nd gen, Python 3.11): ``<d>-api`` (HTTP, public: Billow's bearer tokens
  authenticate), ``<d>-reconcile``, ``<d>-commands``, ``<d>-reaper`` (internal ingress,
  invoked only by ``<d>-invoker``);
* push subscriptions from the three topics to those functions (OIDC as ``<d>-invoker``;
  the reconcile loop's retry backoff of 1-10 s; messages kept a day);
* a Cloud Scheduler job publishing to ``<d>-reaper`` every minute;
* least-privilege IAM: project roles only where GCP has no finer resource
  (``datastore.user``, ``compute.instanceAdmin.v1``, ``logging.viewer``,
  ``logging.logWriter``), every other role on the one topic, key, bucket, service account
  or function that needs it. Nobody gets a basic role (owner, editor, viewer).

``--dry-run`` prints every command instead of running it (no credentials needed).
Reruns are safe: "already exists" answers are skipped. The functions' source is staged in a
temporary directory: ``functions/gcp.py`` as ``main.py``, ``billow_control``, the SDK,
and a ``requirements.txt`` from ``pyproject.toml`` (base and ``gcp``/``server`` extras).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INDEXES = Path(__file__).with_name("firestore.indexes.json")
DEFAULT_PREFIX = "billow-"  # the collection prefix written in firestore.indexes.json
APIS = [
    "cloudfunctions",
    "run",
    "cloudbuild",
    "artifactregistry",
    "firestore",
    "pubsub",
    "cloudscheduler",
    "cloudkms",
    "compute",
    "logging",
    "storage",
    "iam",
    "iamcredentials",
]
PROJECT_ROLES = {  # service account -> roles with no finer-grained resource to bind on
    "control": ["roles/datastore.user", "roles/compute.instanceAdmin.v1", "roles/logging.viewer"],
    "instance": ["roles/logging.logWriter"],
}
EVENT_FUNCTIONS = ("reconcile", "commands", "reaper")
TIMEOUTS = {"api": "60s", "reconcile": "60s", "commands": "60s", "reaper": "300s"}


@dataclass
class Plan:
    """The commands of one deployment, in order; ``$(...)`` marks values read at run time."""

    steps: list[tuple[str, list[str]]] = field(default_factory=list)

    def add(self, what: str, *argv: str) -> None:
        self.steps.append((what, ["gcloud", *argv]))


def build_plan(
    project: str, region: str, deployment: str, extra_env: dict[str, str], zone: str = ""
) -> Plan:
    """Every step, in order. ``zone``: where clusters run (default ``<region>-b``)."""
    zone = zone or f"{region}-b"
    d, p = deployment, ["--project", project]
    sa = {name: f"{d}-{name}@{project}.iam.gserviceaccount.com" for name in PROJECT_ROLES}
    sa["invoker"] = f"{d}-invoker@{project}.iam.gserviceaccount.com"
    topics = {name: f"{d}-{name}" for name in ("reconcile", "events", "commands", "reaper")}
    key = f"projects/{project}/locations/{region}/keyRings/{d}/cryptoKeys/{d}-secrets"
    bucket = bucket_name(project, d)
    plan = Plan()
    plan.add("enable APIs", "services", "enable", *[f"{a}.googleapis.com" for a in APIS], *p)
    for name, title in (
        ("control", "Billow control plane functions"),
        ("invoker", "Billow Pub/Sub pushes"),
        ("instance", "Billow cluster instances"),
    ):
        plan.add(
            f"service account {d}-{name}",
            "iam", "service-accounts", "create", f"{d}-{name}", f"--display-name={title}", *p,
        )  # fmt: skip
    for name, roles in PROJECT_ROLES.items():
        for role in roles:
            plan.add(
                f"project role {role} for {d}-{name}",
                "projects", "add-iam-policy-binding", project,
                f"--member=serviceAccount:{sa[name]}", f"--role={role}", "--condition=None",
            )  # fmt: skip
    plan.add(
        f"{d}-control may attach {d}-instance to VMs",
        "iam", "service-accounts", "add-iam-policy-binding", sa["instance"],
        f"--member=serviceAccount:{sa['control']}", "--role=roles/iam.serviceAccountUser", *p,
    )  # fmt: skip
    plan.add(
        f"Pub/Sub may mint OIDC tokens of {d}-invoker",
        "iam", "service-accounts", "add-iam-policy-binding", sa["invoker"],
        "--member=serviceAccount:service-$(PROJECT_NUMBER)@gcp-sa-pubsub.iam.gserviceaccount.com",
        "--role=roles/iam.serviceAccountTokenCreator", *p,
    )  # fmt: skip
    plan.add(
        "Firestore database (native mode)",
        "firestore", "databases", "create", f"--location={region}", "--type=firestore-native", *p,
    )  # fmt: skip
    _firestore(plan, project, f"{d}-")
    plan.add(f"KMS key ring {d}", "kms", "keyrings", "create", d, f"--location={region}", *p)
    plan.add(
        f"KMS key {d}-secrets",
        "kms", "keys", "create", f"{d}-secrets", f"--keyring={d}", f"--location={region}",
        "--purpose=encryption", "--rotation-period=90d",
        "--next-rotation-time=$(date -u -d +90days +%Y-%m-%dT%H:%M:%SZ)", *p,
    )  # fmt: skip
    plan.add(
        f"{d}-control may encrypt and decrypt with {d}-secrets",
        "kms", "keys", "add-iam-policy-binding", f"{d}-secrets", f"--keyring={d}",
        f"--location={region}", f"--member=serviceAccount:{sa['control']}",
        "--role=roles/cloudkms.cryptoKeyEncrypterDecrypter", *p,
    )  # fmt: skip
    plan.add(
        f"bucket {bucket} (instance kit, users' wheels)",
        "storage", "buckets", "create", f"gs://{bucket}", f"--location={region}",
        "--uniform-bucket-level-access", "--public-access-prevention", *p,
    )  # fmt: skip
    plan.add(  # signed URLs act as their signer: it must create, overwrite and read objects
        f"{d}-control may read and write objects of {bucket} (what its signed URLs allow)",
        "storage", "buckets", "add-iam-policy-binding", f"gs://{bucket}",
        f"--member=serviceAccount:{sa['control']}", "--role=roles/storage.objectUser", *p,
    )  # fmt: skip
    plan.add(
        f"{d}-control may sign URLs as itself (IAM signBlob; it has no key file)",
        "iam", "service-accounts", "add-iam-policy-binding", sa["control"],
        f"--member=serviceAccount:{sa['control']}",
        "--role=roles/iam.serviceAccountTokenCreator", *p,
    )  # fmt: skip
    for name, topic in topics.items():
        plan.add(f"topic {topic}", "pubsub", "topics", "create", topic, *p)
        if name in ("reconcile", "events"):
            plan.add(
                f"{d}-control may publish to {topic}",
                "pubsub", "topics", "add-iam-policy-binding", topic,
                f"--member=serviceAccount:{sa['control']}", "--role=roles/pubsub.publisher", *p,
            )  # fmt: skip
    env = {
        "BILLOW_DEPLOYMENT": d,
        "GOOGLE_CLOUD_PROJECT": project,
        "BILLOW_FIRESTORE_PREFIX": f"{d}-",
        "BILLOW_RECONCILE_TOPIC": topics["reconcile"],
        "BILLOW_EVENTS_TOPIC": topics["events"],
        "BILLOW_GCP_PROJECT": project,
        "BILLOW_GCP_ZONE": zone,
        "BILLOW_GCP_KMS_KEY": key,
        "BILLOW_GCP_SERVICE_ACCOUNT": sa["instance"],
        "BILLOW_GCS_BUCKET": bucket,
        **extra_env,
    }
    for name in ("api", *EVENT_FUNCTIONS):
        if name != "api":
            env["BILLOW_CONTROL_URL"] = f"$(URL_OF {d}-api)"
        access = (
            ["--allow-unauthenticated", "--ingress-settings=all"]
            if name == "api"
            else ["--no-allow-unauthenticated", "--ingress-settings=internal-only"]
        )
        plan.add(
            f"function {d}-{name}",
            "functions", "deploy", f"{d}-{name}", "--gen2", "--runtime=python311",
            f"--region={region}", "--source=$(STAGED_SOURCE)", f"--entry-point={name}",
            "--trigger-http", *access, f"--service-account={sa['control']}",
            f"--timeout={TIMEOUTS[name]}", "--concurrency=1", "--memory=512Mi",
            env_flag(env), *p,
        )  # fmt: skip
        if name == "api":  # the other functions and instances reach it at this URL
            env["BILLOW_CONTROL_URL"] = f"$(URL_OF {d}-api)"
            plan.add(
                f"{d}-api told its own URL (a new revision of its Cloud Run service)",
                "run", "services", "update", f"{d}-api", f"--region={region}",
                f"--update-env-vars=BILLOW_CONTROL_URL=$(URL_OF {d}-api)", *p,
            )  # fmt: skip
        else:
            plan.add(
                f"{d}-invoker may invoke {d}-{name}",
                "functions", "add-invoker-policy-binding", f"{d}-{name}", f"--region={region}",
                f"--member=serviceAccount:{sa['invoker']}", *p,
            )  # fmt: skip
            retry = ["--min-retry-delay=1s", "--max-retry-delay=10s"]
            plan.add(
                f"push subscription {d}-{name}-push",
                "pubsub", "subscriptions", "create", f"{d}-{name}-push",
                f"--topic={topics[name]}", f"--push-endpoint=$(URL_OF {d}-{name})",
                f"--push-auth-service-account={sa['invoker']}", "--ack-deadline=120",
                "--message-retention-duration=1d", *retry, *p,
            )  # fmt: skip
    plan.add(
        f"scheduler job {d}-reaper (every minute)",
        "scheduler", "jobs", "create", "pubsub", f"{d}-reaper", f"--location={region}",
        "--schedule=* * * * *", f"--topic={topics['reaper']}", "--message-body={}", *p,
    )  # fmt: skip
    return plan


def bucket_name(project: str, deployment: str) -> str:
    """The deployment's bucket: project ids are globally unique, and so are bucket names."""
    return f"{project}-{deployment}-env"


def env_flag(env: dict[str, str]) -> str:
    """``--set-env-vars`` of ``env``; gcloud's ``^|^`` delimiter when a value has a comma
    (``BILLOW_UV_SHA256=x86_64=...,aarch64=...``)."""
    items = [f"{k}={v}" for k, v in env.items()]
    if any("," in v for v in env.values()):
        return "--set-env-vars=^|^" + "|".join(items)
    return "--set-env-vars=" + ",".join(items)


def _firestore(plan: Plan, project: str, prefix: str) -> None:
    """Composite indexes, index exemptions and TTL policies of ``firestore.indexes.json``
    with ``billow-`` replaced by ``prefix`` in collection group names."""
    spec = json.loads(INDEXES.read_text())
    p = ["--project", project, "--database=(default)"]

    def group(name: str) -> str:
        return prefix + name.removeprefix(DEFAULT_PREFIX)

    for index in spec["indexes"]:
        fields = [
            f"--field-config=field-path={f['fieldPath']},order={f['order'].lower()}"
            for f in index["fields"]
        ]
        plan.add(
            f"composite index on {group(index['collectionGroup'])}",
            "firestore", "indexes", "composite", "create",
            f"--collection-group={group(index['collectionGroup'])}",
            f"--query-scope={index['queryScope'].lower()}", *fields, "--async", *p,
        )  # fmt: skip
    for override in spec["fieldOverrides"]:
        where = [override["fieldPath"], f"--collection-group={group(override['collectionGroup'])}"]
        if override.get("ttl"):
            plan.add(
                f"TTL on {group(override['collectionGroup'])}.{override['fieldPath']}",
                "firestore", "fields", "ttls", "update", *where, "--enable-ttl", "--async", *p,
            )  # fmt: skip
        indexes = override.get("indexes")
        if indexes == []:
            plan.add(
                f"no index on {group(override['collectionGroup'])}.{override['fieldPath']}",
                "firestore", "indexes", "fields", "update", *where, "--disable-indexes",
                "--async", *p,
            )  # fmt: skip
        elif indexes:
            plan.add(
                f"index on {group(override['collectionGroup'])}.{override['fieldPath']} only",
                "firestore", "indexes", "fields", "update", *where,
                *[f"--index=order={i['order'].lower()}" for i in indexes], "--async", *p,
            )  # fmt: skip


def stage_source(into: Path) -> Path:
    """The functions' source tree: ``main.py``, ``billow_control``, ``billow`` and a
    ``requirements.txt`` of the base, ``server`` and ``gcp`` dependencies."""
    shutil.copy(ROOT / "functions" / "gcp.py", into / "main.py")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "functions" / "billow_control", into / "billow_control", ignore=ignore)
    shutil.copytree(ROOT / "sdk" / "billow", into / "billow", ignore=ignore)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [*project["dependencies"], *extras["server"], *extras["gcp"]]
    (into / "requirements.txt").write_text("\n".join(requirements) + "\n")
    return into


def run(plan: Plan, project: str, region: str, source: Path) -> None:
    """Run ``plan``, filling in the ``$(...)`` values; "already exists" is not an error."""
    number = _gcloud_value(["projects", "describe", project, "--format=value(projectNumber)"])
    for what, argv in plan.steps:
        argv = [_fill(a, project, region, number, source) for a in argv]
        print(f"==> {what}", flush=True)
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            if re.search(r"already exists|ALREADY_EXISTS", done.stderr, re.IGNORECASE):
                print("    (exists)")
                continue
            sys.exit(f"failed: {shlex.join(argv)}\n{done.stderr.strip()}")


def _fill(arg: str, project: str, region: str, number: str, source: Path) -> str:
    arg = arg.replace("$(PROJECT_NUMBER)", number).replace("$(STAGED_SOURCE)", str(source))
    if "$(date " in arg:
        arg = re.sub(r"\$\(date [^)]*\)", _in_90_days(), arg)
    for name in re.findall(r"\$\(URL_OF ([a-z0-9-]+)\)", arg):
        url = _gcloud_value(
            ["functions", "describe", name, f"--region={region}", "--project", project,
             "--format=value(serviceConfig.uri)"]
        )  # fmt: skip
        arg = arg.replace(f"$(URL_OF {name})", url)
    return arg


def _in_90_days() -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gcloud_value(argv: list[str]) -> str:
    return subprocess.run(
        ["gcloud", *argv], capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True, help="e.g. europe-west1")
    parser.add_argument("--zone", default="", help="where clusters run (default <region>-b)")
    parser.add_argument("--deployment", default="billow", help="name prefix of every resource")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="an extra environment variable of the functions (e.g. the Compute settings)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z][a-z0-9-]{2,20}", args.deployment):
        parser.error("--deployment: 3-21 lower-case letters, digits and dashes, starting "
                     "with a letter (it prefixes service account ids of at most 30)")  # fmt: skip
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key) or "|" in value:
            parser.error(f"--set {item!r}: expected KEY=VALUE (KEY upper case, no '|')")
        extra[key] = value
    plan = build_plan(args.project, args.region, args.deployment, extra, args.zone)
    if args.dry_run:
        for what, command in plan.steps:
            print(f"# {what}\n{shlex.join(command)}")
        return
    if shutil.which("gcloud") is None:
        sys.exit("gcloud is not installed: see https://cloud.google.com/sdk/docs/install")
    with tempfile.TemporaryDirectory(prefix="billow-functions-") as tmp:
        run(plan, args.project, args.region, stage_source(Path(tmp)))
        url = _fill(f"$(URL_OF {args.deployment}-api)", args.project, args.region, "", Path(tmp))
    print(f"deployed: the API is {url}/v1 (billow login --server {url})")
    bucket = bucket_name(args.project, args.deployment)
    if "BILLOW_UV_SHA256" not in extra:
        print(
            f"next: scripts/upload-instance-kit.sh --gcs-bucket {bucket}, then run this "
            "command again with the --set BILLOW_AGENT_WHEEL=... --set BILLOW_UV_SHA256=... "
            "it prints"
        )


if __name__ == "__main__":
    main()
