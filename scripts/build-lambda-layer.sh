#!/usr/bin/env bash
# Build the Lambda layer with the control plane's Python dependencies into
# .build/lambda-layer/python (the layout Lambda expects), as Linux x86_64 wheels for the
# python3.11 runtime, whatever machine runs it. Idempotent: skips when the requirement list
# it was built from is unchanged. Talks only to PyPI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
LAYER="$ROOT/.build/lambda-layer"
# What functions/aws.py needs at run time (never dask): keep in step with pyproject's `aws`.
REQUIREMENTS=(
  "pydantic>=2.7"
  "cryptography>=42"
  "pynamodb>=6.0"
  "aws-lambda-powertools[tracer]>=3.0"
  "boto3>=1.34"
)
STAMP="$LAYER/.requirements"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${REQUIREMENTS[*]}" ]; then
  echo "build-lambda-layer: $LAYER is up to date"
  exit 0
fi
rm -rf "$LAYER"
mkdir -p "$LAYER/python"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --target "$LAYER/python" --platform manylinux2014_x86_64 --implementation cp \
  --python-version 3.11 --only-binary=:all: "${REQUIREMENTS[@]}"
find "$LAYER/python" -name "__pycache__" -type d -prune -exec rm -rf {} +
echo "${REQUIREMENTS[*]}" > "$STAMP"
echo "build-lambda-layer: built $(du -sh "$LAYER/python" | cut -f1) into $LAYER/python"
