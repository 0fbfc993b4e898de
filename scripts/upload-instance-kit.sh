#!/usr/bin/env bash
# Upload the instance kit to a deployment's environments bucket: what bare EC2 and Compute
# Engine instances bootstrap from (POST /v1/agent/kit, adapters/instance_bootstrap.py).
#
#   * a billow wheel built from this checkout (uv build --wheel), and
#   * the uv binary of a pinned uv release for linux x86_64 and aarch64, taken from uv's
#     manylinux wheels on PyPI (pip download; no other download site),
#
# each as objects/<sha256> with the SHA-256 checksum S3 verifies (an object already there
# with that checksum is kept); on GCP (--gcs-bucket) with ``gcloud storage cp`` and the
# custom metadata billow-sha256=<sha256> that the GCS object store checks
# (adapters/gcp/gcs_object_store.py). Prints, on stdout, the values the functions need:
#
#   BILLOW_AGENT_WHEEL=<sha256>/<wheel file name>
#   BILLOW_UV_SHA256=x86_64=<sha256>,aarch64=<sha256>
#
# and, on stderr, the osls --param options (AWS) or deploy.py --set options (GCP) that
# set them.
#
# Usage:
#   scripts/upload-instance-kit.sh --stage STAGE [--region REGION]  # bucket: the stack's output
#   scripts/upload-instance-kit.sh --bucket BUCKET [--region REGION]
#   scripts/upload-instance-kit.sh --gcs-bucket BUCKET  # GCP: <project>-<deployment>-env
#
# On GCP, gcloud must be logged in as someone who may write objects of the bucket.
# AWS credentials come from the usual boto3 chain (AWS_PROFILE, ...); they need
# s3:PutObject, s3:GetObject and s3:ListBucket on the bucket, and with --stage
# cloudformation:DescribeStacks on the stack billow-STAGE. UV_VERSION (default below) pins
# uv; VENV (default .venv) is the project's venv, with boto3 and uv (pip install -e '.[aws]').
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
UV_VERSION="${UV_VERSION:-0.13.9}"
MACHINES=(x86_64 aarch64)
OUT="$ROOT/.build/instance-kit"

die() { echo "upload-instance-kit: $*" >&2; exit 1; }

bucket="" gcs_bucket="" stage="" region="${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}"
while [ $# -gt 0 ]; do
  case "$1" in
    --bucket) bucket="${2:?--bucket needs a name}"; shift 2 ;;
    --gcs-bucket) gcs_bucket="${2:?--gcs-bucket needs a name}"; shift 2 ;;
    --stage) stage="${2:?--stage needs a name}"; shift 2 ;;
    --region) region="${2:?--region needs a name}"; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$bucket" ] || [ -n "$stage" ] || [ -n "$gcs_bucket" ] ||
  die "give --stage STAGE, --bucket BUCKET or --gcs-bucket BUCKET (see --help)"
if [ -n "$gcs_bucket" ]; then
  command -v gcloud >/dev/null || die "gcloud is not installed: https://cloud.google.com/sdk/docs/install"
fi
PY="$VENV/bin/python"
[ -x "$PY" ] || die "no Python venv at VENV=$VENV (make the project's venv, or set VENV)"

rm -rf "$OUT"
mkdir -p "$OUT/dist"

echo "upload-instance-kit: building the billow wheel" >&2
"$PY" -m uv build --wheel --quiet --out-dir "$OUT/dist" "$ROOT" >&2
wheels=("$OUT"/dist/billow-*.whl)
[ ${#wheels[@]} = 1 ] && [ -f "${wheels[0]}" ] || die "expected one billow wheel in $OUT/dist"

uv_binaries=()
for machine in "${MACHINES[@]}"; do
  echo "upload-instance-kit: uv $UV_VERSION for linux $machine (PyPI wheel)" >&2
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform "manylinux_2_17_$machine" --dest "$OUT/uv-$machine" "uv==$UV_VERSION" >&2
  uv_binaries+=("$machine=$OUT/uv-$machine/uv")
  "$PY" - "$OUT/uv-$machine" <<'EXTRACT'
import pathlib, sys, zipfile

folder = pathlib.Path(sys.argv[1])
(wheel,) = folder.glob("uv-*.whl")
with zipfile.ZipFile(wheel) as z:
    (member,) = [n for n in z.namelist() if n.endswith(".data/scripts/uv")]
    (folder / "uv").write_bytes(z.read(member))
(folder / "uv").chmod(0o755)
EXTRACT
done

if [ -n "$gcs_bucket" ]; then
  upload_gcs() {  # prints the sha256 of $1 once it is gs://BUCKET/objects/<sha256>
    local sha
    sha="$(sha256sum "$1" | cut -d' ' -f1)"
    gcloud storage cp --quiet "$1" "gs://$gcs_bucket/objects/$sha" \
      --custom-metadata="billow-sha256=$sha" >&2 || die "upload of $1 failed"
    echo "upload-instance-kit: $(basename "$1") -> gs://$gcs_bucket/objects/$sha" >&2
    echo "$sha"
  }
  agent_wheel="$(upload_gcs "${wheels[0]}")/$(basename "${wheels[0]}")"
  uv=""
  for binary in "${uv_binaries[@]}"; do
    uv="${uv:+$uv,}${binary%%=*}=$(upload_gcs "${binary#*=}")"
  done
  echo "BILLOW_AGENT_WHEEL=$agent_wheel"
  echo "BILLOW_UV_SHA256=$uv"
  echo "upload-instance-kit: now set them on the functions (your deploy options, plus):" >&2
  echo "  python infra/gcp/deploy.py ... --set BILLOW_AGENT_WHEEL=$agent_wheel --set BILLOW_UV_SHA256=$uv" >&2
  exit 0
fi

"$PY" - "$bucket" "$stage" "$region" "${wheels[0]}" "${uv_binaries[@]}" <<'UPLOAD'
import base64, hashlib, pathlib, sys

import boto3
from botocore.exceptions import ClientError

bucket, stage, region, wheel, *binaries = sys.argv[1:]
if not bucket:
    stack = f"billow-{stage}"
    cfn = boto3.client("cloudformation", region_name=region)
    outputs = cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    found = [o["OutputValue"] for o in outputs if o["OutputKey"] == "EnvBucketName"]
    if not found:
        sys.exit(f"upload-instance-kit: stack {stack} has no EnvBucketName output (deploy first)")
    bucket = found[0]
s3 = boto3.client("s3", region_name=region)


def upload(path: pathlib.Path) -> str:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    checksum = base64.b64encode(bytes.fromhex(sha)).decode()
    key = f"objects/{sha}"
    try:
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        if head.get("ChecksumSHA256") == checksum:
            print(f"upload-instance-kit: {path.name} is in s3://{bucket}/{key}", file=sys.stderr)
            return sha
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    s3.put_object(
        Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum
    )
    print(f"upload-instance-kit: {path.name} -> s3://{bucket}/{key}", file=sys.stderr)
    return sha


wheel_path = pathlib.Path(wheel)
agent_wheel = f"{upload(wheel_path)}/{wheel_path.name}"
uv = ",".join(
    f"{machine}={upload(pathlib.Path(path))}"
    for machine, path in (b.split("=", 1) for b in binaries)
)
print(f"BILLOW_AGENT_WHEEL={agent_wheel}")
print(f"BILLOW_UV_SHA256={uv}")
where = f"--stage {stage}" if stage else "--stage STAGE"
print(
    "upload-instance-kit: now set them on the functions:\n"
    f"  .tools/node_modules/.bin/osls deploy {where} --region {region} \\\n"
    f'    --param="agentWheel={agent_wheel}" --param="uvSha256={uv}"',
    file=sys.stderr,
)
UPLOAD
