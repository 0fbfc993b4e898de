"""scripts/upload-instance-kit.sh against moto_server: it builds the billow wheel, takes the
uv binaries out of uv's PyPI wheels, uploads all three by sha256 with the checksum S3
verifies, and prints the two variables the functions read."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from billow_control.adapters.aws.s3_object_store import S3ObjectStore
from billow_control.runtimes.aws import control_settings
from tests.support.processes import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = ROOT / "scripts" / "upload-instance-kit.sh"


def run(moto_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "VENV": sys.prefix,
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_upload_instance_kit_uploads_by_sha256_and_prints_the_variables(
    moto_url: str, tmp_path: Path
) -> None:
    bucket = f"kit-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").create_bucket(Bucket=bucket)
    done = run(moto_url, "--bucket", bucket)
    assert done.returncode == 0, done.stderr
    variables = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert set(variables) == {"BILLOW_AGENT_WHEEL", "BILLOW_UV_SHA256"}
    assert '--param="agentWheel=' in done.stderr and '--param="uvSha256=' in done.stderr
    settings = control_settings(
        {"BILLOW_DEPLOYMENT": "d", "BILLOW_CONTROL_URL": "https://c.test", **variables}
    )
    assert settings.agent_wheel is not None
    wheel_sha, _, wheel_name = settings.agent_wheel.partition("/")
    assert wheel_name.startswith("billow-") and wheel_name.endswith("-py3-none-any.whl")
    assert set(settings.uv_sha256) == {"x86_64", "aarch64"}

    sigv4 = Config(signature_version="s3v4")
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", config=sigv4)
    store = S3ObjectStore(s3, bucket)
    for sha in (wheel_sha, *settings.uv_sha256.values()):
        assert store.exists(sha), sha  # stored with S3's checksum equal to its name
    # The kit's uv is a real uv of this machine's kind, and not tagged to expire.
    uv = tmp_path / "uv"
    here = store.key(settings.uv_sha256[platform.machine()])
    uv.write_bytes(s3.get_object(Bucket=bucket, Key=here)["Body"].read())
    uv.chmod(0o755)
    version = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("uv ")
    tags = s3.get_object_tagging(Bucket=bucket, Key=store.key(wheel_sha))["TagSet"]
    assert tags == []

    again = run(moto_url, "--bucket", bucket)  # uv objects are kept, not uploaded again
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1] == done.stdout.splitlines()[1]
    assert f"is in s3://{bucket}/objects/{settings.uv_sha256['x86_64']}" in again.stderr


def test_upload_instance_kit_needs_a_bucket_or_a_stage(moto_url: str) -> None:
    done = run(moto_url)
    assert done.returncode == 1
    assert "give --stage STAGE, --bucket BUCKET or --gcs-bucket BUCKET" in done.stderr
