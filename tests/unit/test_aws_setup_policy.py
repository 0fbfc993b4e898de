"""The policies ``billow setup aws`` creates, read statically: EC2, logs, the public
image parameters and passing the instance role; nothing that reads data."""

from __future__ import annotations

from typing import Any

import pytest

from billow.aws_setup import AMI_PARAMETERS, control_policy, instance_policy, trust_policy

pytestmark = pytest.mark.unit

DEPLOYMENT, ACCOUNT = "prod", "210987654321"
# Services whose actions read or write data (or the keys to it): none may appear, but S3
# on the environment bucket's objects when one is given.
DATA_SERVICES = {
    "s3", "dynamodb", "secretsmanager", "kms", "rds", "rds-data", "redshift", "redshift-data",
    "athena", "glue", "sqs", "sns", "kinesis", "firehose", "elasticfilesystem", "fsx",
    "lambda", "sts", "ecr", "es", "aoss", "timestream", "ssm",
}  # fmt: skip
DESTRUCTIVE = (
    "ec2:Terminate", "ec2:Delete", "ec2:Modify", "ec2:Revoke", "ec2:Detach", "ec2:Associate",
    "ec2:Disassociate", "ec2:Authorize", "ec2:Attach", "ec2:GetConsoleOutput", "ec2:Start",
)  # fmt: skip
CHANGES_EXISTING = {"ec2:CreateRoute", "ec2:CreateLaunchTemplateVersion"}


def actions(statement: dict[str, Any]) -> list[str]:
    found = statement["Action"]
    return [found] if isinstance(found, str) else list(found)


def resources(statement: dict[str, Any]) -> list[str]:
    found = statement["Resource"]
    return [found] if isinstance(found, str) else list(found)


@pytest.mark.parametrize("bucket", [None, "acme-billow-envs"])
def test_the_control_policy_has_no_data_action(bucket: str | None) -> None:
    policy = control_policy(DEPLOYMENT, ACCOUNT, bucket)
    for s in policy["Statement"]:
        assert s["Effect"] == "Allow" and "NotAction" not in s and "NotResource" not in s
        for action in actions(s):
            service = action.split(":")[0]
            assert "*" not in action, action
            if service == "s3":  # only the environment bucket's objects
                assert bucket and resources(s) == [f"arn:aws:s3:::{bucket}/objects/*"], s
            elif service == "ssm":  # only AWS's public Amazon Linux image parameters
                assert action == "ssm:GetParameter" and resources(s) == [AMI_PARAMETERS]
            else:
                assert service in {"ec2", "logs", "iam"} and service not in DATA_SERVICES
            if service == "iam":
                assert action == "iam:PassRole"
                assert s["Condition"] == {
                    "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}
                }
                assert resources(s) == [f"arn:aws:iam::{ACCOUNT}:role/billow-setup/prod/*"]
            if service == "logs":
                assert action in (
                    "logs:GetLogEvents",
                    "logs:FilterLogEvents",
                    "logs:DescribeLogStreams",
                )
                assert resources(s) == [f"arn:aws:logs:*:{ACCOUNT}:log-group:/billow/prod/*"]
        if "*" in resources(s):
            assert all(a.startswith("ec2:Describe") for a in actions(s)), s
    s3 = [a for s in policy["Statement"] for a in actions(s) if a.startswith("s3:")]
    assert s3 == ([] if bucket is None else ["s3:GetObject", "s3:PutObject"])


def test_destructive_actions_need_this_deployments_tag() -> None:
    policy = control_policy(DEPLOYMENT, ACCOUNT)
    owned = {"StringEquals": {"aws:ResourceTag/billow:deployment": DEPLOYMENT}}
    tagged = {"StringEquals": {"aws:RequestTag/billow:deployment": DEPLOYMENT}}
    for s in policy["Statement"]:
        if any(a.startswith(DESTRUCTIVE) or a in CHANGES_EXISTING for a in actions(s)):
            assert s["Condition"]["StringEquals"] == owned["StringEquals"], s["Sid"]
            assert set(s["Condition"]) <= {"StringEquals", "ForAllValues:StringEquals"}
        creates = [a for a in actions(s) if a.startswith("ec2:Create")]
        if set(creates) - {"ec2:CreateTags", "ec2:CreateFleet"} - CHANGES_EXISTING:
            assert s.get("Condition") == tagged or all(r.endswith(":vpc/*") for r in resources(s))
    launch = [s for s in policy["Statement"] if "ec2:RunInstances" in actions(s)]
    instances = [s for s in launch if any(":instance/" in r for r in resources(s))]
    assert instances and all(s["Condition"] == tagged for s in instances)


def test_the_trust_needs_the_external_id_and_instances_get_logs_only() -> None:
    trust = trust_policy("arn:aws:iam::123456789012:root", "s3cret-id")
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": "s3cret-id"}}
    granted = [a for s in instance_policy(DEPLOYMENT, ACCOUNT)["Statement"] for a in actions(s)]
    assert granted == ["logs:CreateLogStream", "logs:PutLogEvents"]


def test_the_warm_pool_may_start_modify_and_untag_only_this_deployments_instances() -> None:
    """A launch that takes a stopped pool instance starts it and changes its group, shutdown
    behaviour and user data; the only tag Billow deletes is the pool's. The control plane
    never stops an instance (pool instances power themselves off)."""
    policy = control_policy(DEPLOYMENT, ACCOUNT)
    owned = {"aws:ResourceTag/billow:deployment": DEPLOYMENT}
    granted = {a: s for s in policy["Statement"] for a in actions(s)}
    for action in ("ec2:StartInstances", "ec2:ModifyInstanceAttribute", "ec2:DeleteTags"):
        assert granted[action]["Condition"]["StringEquals"] == owned, action
    assert "ec2:StopInstances" not in granted
    untag = granted["ec2:DeleteTags"]
    assert actions(untag) == ["ec2:DeleteTags"]
    assert untag["Condition"]["ForAllValues:StringEquals"] == {"aws:TagKeys": ["billow:pool"]}
