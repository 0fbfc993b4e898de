"""Clusters in another AWS account: a boto3 session whose credentials come from
``sts:AssumeRole`` of the role ``billow setup aws`` created there, with its ExternalId,
refreshed by botocore before they expire. The runtime builds the clients of
``CUSTOMER_SERVICES`` (instances, their logs, the image parameters) from it; the control
plane's own resources (tables, state machine, bus, key, bucket) keep its own identity.
"""

from __future__ import annotations

from typing import Any

CUSTOMER_SERVICES = frozenset({"ec2", "logs", "ssm"})
DURATION_SECONDS = 3600


def assumed_session(
    region: str, endpoint: str | None, role_arn: str, external_id: str, session_name: str
) -> Any:
    """A ``boto3.session.Session`` acting as ``role_arn``. Raises
    ``botocore.exceptions.ClientError`` when the role cannot be assumed (wrong ExternalId,
    a trust policy that does not name this control plane)."""
    import boto3
    from botocore.credentials import RefreshableCredentials
    from botocore.session import get_session

    sts = boto3.session.Session(region_name=region).client("sts", endpoint_url=endpoint)

    def fetch() -> dict[str, str]:
        found = sts.assume_role(
            RoleArn=role_arn,
            RoleSessionName=session_name[:64],
            ExternalId=external_id,
            DurationSeconds=DURATION_SECONDS,
        )["Credentials"]
        return {
            "access_key": found["AccessKeyId"],
            "secret_key": found["SecretAccessKey"],
            "token": found["SessionToken"],
            "expiry_time": found["Expiration"].isoformat(),
        }

    credentials = RefreshableCredentials.create_from_metadata(
        metadata=fetch(), refresh_using=fetch, method="sts-assume-role"
    )
    core = get_session()
    core._credentials = credentials
    core.set_config_variable("region", region)
    return boto3.session.Session(botocore_session=core)
