"""``billow setup aws``: what an admin creates, once, in the AWS account where clusters
will run, so that a control plane (possibly in another account) can run them there.

* the **control role** ``billow-<deployment>-control``, which the control plane assumes
  (``sts:AssumeRole`` with an ``ExternalId``). Its policy (``control_policy``) allows only
  the EC2 fleet, instance, launch-template, security-group and network actions Billow
  makes, reading Billow's instance logs, the public Amazon Linux image parameters, passing
  the instance role to EC2 and, when given, the environment bucket's objects. Creating
  requires the ``billow:deployment`` tag, and every destructive action is conditioned on
  ``aws:ResourceTag/billow:deployment``. No data actions: no other S3, no DynamoDB, no
  Secrets Manager, no KMS.
* the **instance role and profile** ``billow-<deployment>-instance`` of cluster VMs:
  writing their own logs, no data permissions.
* the **log group** ``/billow/<deployment>/instances``.

Everything is created under the IAM path ``/billow-setup/<deployment>/`` and tagged
``billow:deployment`` and ``billow:setup``; ``remove`` deletes exactly that.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SETUP_TAG = "billow:setup"
DEPLOYMENT_TAG = "billow:deployment"
POOL_TAG = "billow:pool"  # the only tag Billow ever deletes (a warm-pool instance taken)
AMI_PARAMETERS = "arn:aws:ssm:*::parameter/aws/service/ami-amazon-linux-latest/*"


def path_of(deployment: str) -> str:
    return f"/billow-setup/{deployment}/"


def control_policy(deployment: str, account: str, env_bucket: str | None = None) -> dict[str, Any]:
    """The control role's policy for ``deployment`` in ``account``."""

    def ec2(kind: str) -> str:
        return f"arn:aws:ec2:*:{account}:{kind}/*"

    owned = {"StringEquals": {f"aws:ResourceTag/{DEPLOYMENT_TAG}": deployment}}
    tagged = {"StringEquals": {f"aws:RequestTag/{DEPLOYMENT_TAG}": deployment}}
    launch = ["ec2:RunInstances", "ec2:CreateFleet"]
    creates = [
        "ec2:CreateSecurityGroup",
        "ec2:CreateLaunchTemplate",
        "ec2:CreateVpc",
        "ec2:CreateSubnet",
        "ec2:CreateInternetGateway",
        "ec2:CreateRouteTable",
    ]
    describe = [
        f"ec2:Describe{what}"
        for what in [
            "Instances",
            "InstanceStatus",
            "InstanceTypes",
            "Images",
            "AvailabilityZones",
            "Vpcs",
            "Subnets",
            "SecurityGroups",
            "InternetGateways",
            "RouteTables",
            "LaunchTemplates",
            "LaunchTemplateVersions",
            "Fleets",
            "Tags",
            "Volumes",
        ]
    ]
    statements: list[dict[str, Any]] = [
        {"Sid": "Describe", "Action": describe, "Resource": "*"},
        {
            "Sid": "LaunchOnlyTagged",
            "Action": launch,
            "Resource": [ec2("instance"), ec2("volume"), ec2("fleet")],
            "Condition": tagged,
        },
        {
            "Sid": "LaunchUsing",
            "Action": launch,
            "Resource": ["arn:aws:ec2:*::image/*", "arn:aws:ec2:*::snapshot/*"]
            + [
                ec2(k)
                for k in [
                    "subnet",
                    "security-group",
                    "network-interface",
                    "key-pair",
                    "placement-group",
                    "spot-instances-request",
                ]
            ],
        },
        {
            "Sid": "LaunchFromOwnTemplates",
            "Action": launch,
            "Resource": ec2("launch-template"),
            "Condition": owned,
        },
        {
            "Sid": "CreateOnlyTagged",
            "Action": creates,
            "Resource": [
                ec2(k)
                for k in [
                    "security-group",
                    "launch-template",
                    "vpc",
                    "subnet",
                    "internet-gateway",
                    "route-table",
                ]
            ],
            "Condition": tagged,
        },
        {
            "Sid": "CreateInVpc",
            "Action": ["ec2:CreateSecurityGroup", "ec2:CreateSubnet", "ec2:CreateRouteTable"],
            "Resource": ec2("vpc"),
        },
        {
            "Sid": "TagOnCreate",
            "Action": "ec2:CreateTags",
            "Resource": f"arn:aws:ec2:*:{account}:*/*",
            "Condition": {
                "StringEquals": {
                    "ec2:CreateAction": ["RunInstances", "CreateFleet"]
                    + [c.split(":")[1] for c in creates]
                }
            },
        },
        {
            "Sid": "ChangeOnlyOwn",
            "Action": [
                f"ec2:{a}"
                for a in [
                    "TerminateInstances",
                    "GetConsoleOutput",
                    "DeleteFleets",
                    "CreateLaunchTemplateVersion",
                    "DeleteLaunchTemplate",
                    "AuthorizeSecurityGroupIngress",
                    "AuthorizeSecurityGroupEgress",
                    "RevokeSecurityGroupIngress",
                    "RevokeSecurityGroupEgress",
                    "DeleteSecurityGroup",
                    "ModifyVpcAttribute",
                    "DeleteVpc",
                    "ModifySubnetAttribute",
                    "DeleteSubnet",
                    "AttachInternetGateway",
                    "DetachInternetGateway",
                    "DeleteInternetGateway",
                    "CreateRoute",
                    "DeleteRoute",
                    "AssociateRouteTable",
                    "DisassociateRouteTable",
                    "DeleteRouteTable",
                    "CreateTags",
                    # The warm pool: a launch takes a stopped pool instance and starts it.
                    "StartInstances",
                    "ModifyInstanceAttribute",
                ]
            ],
            "Resource": f"arn:aws:ec2:*:{account}:*/*",
            "Condition": owned,
        },
        {
            "Sid": "RemovePoolTag",
            "Action": "ec2:DeleteTags",
            "Resource": [ec2("instance"), ec2("volume")],
            "Condition": {
                **owned,
                "ForAllValues:StringEquals": {"aws:TagKeys": [POOL_TAG]},
            },
        },
        {
            "Sid": "InstanceLogs",
            "Action": ["logs:GetLogEvents", "logs:FilterLogEvents", "logs:DescribeLogStreams"],
            "Resource": f"arn:aws:logs:*:{account}:log-group:/billow/{deployment}/*",
        },
        {"Sid": "AmazonLinuxImages", "Action": "ssm:GetParameter", "Resource": AMI_PARAMETERS},
        {
            "Sid": "PassInstanceRole",
            "Action": "iam:PassRole",
            "Resource": f"arn:aws:iam::{account}:role{path_of(deployment)}*",
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        },
    ]
    if env_bucket:
        statements.append(
            {
                "Sid": "EnvironmentBucket",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": f"arn:aws:s3:::{env_bucket}/objects/*",
            }
        )
    for s in statements:
        s["Effect"] = "Allow"
    return {"Version": "2012-10-17", "Statement": statements}


def trust_policy(principal: str, external_id: str) -> dict[str, Any]:
    """Only ``principal`` (the control plane's account or role ARN) may assume the
    control role, and only with ``external_id``."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
            }
        ],
    }


def instance_policy(deployment: str, account: str) -> dict[str, Any]:
    """Cluster VMs write their own log streams: nothing else, no data permissions."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "WriteOwnLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"arn:aws:logs:*:{account}:log-group:/billow/{deployment}/*",
            }
        ],
    }


EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


@dataclass
class Step:
    """One change setup makes: what it is, the policy it grants (if any), and how."""

    title: str
    run: Callable[[], None]
    policy: dict[str, Any] | None = None


@dataclass
class Setup:
    """What ``billow setup aws`` creates for ``deployment`` with ``session`` (boto3)."""

    session: Any
    deployment: str
    principal: str
    external_id: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    env_bucket: str | None = None

    def __post_init__(self) -> None:
        self.iam = self.session.client("iam")
        self.logs = self.session.client("logs")
        self.account = str(self.session.client("sts").get_caller_identity()["Account"])
        self.path = path_of(self.deployment)
        self.control_role = f"billow-{self.deployment}-control"
        self.instance_role = f"billow-{self.deployment}-instance"
        self.log_group = f"/billow/{self.deployment}/instances"

    @property
    def tags(self) -> list[dict[str, str]]:
        return [
            {"Key": DEPLOYMENT_TAG, "Value": self.deployment},
            {"Key": SETUP_TAG, "Value": self.deployment},
        ]

    def outputs(self) -> dict[str, str]:
        """What the control plane is configured with afterwards."""
        return {
            "BILLOW_ASSUME_ROLE_ARN": (
                f"arn:aws:iam::{self.account}:role{self.path}{self.control_role}"
            ),
            "BILLOW_EXTERNAL_ID": self.external_id,
            "BILLOW_INSTANCE_PROFILE_ARN": (
                f"arn:aws:iam::{self.account}:instance-profile{self.path}{self.instance_role}"
            ),
            "BILLOW_INSTANCE_LOG_GROUP": self.log_group,
        }

    def steps(self) -> list[Step]:
        """The changes, in order; each is safe to run again (``EntityAlreadyExists``)."""
        control = control_policy(self.deployment, self.account, self.env_bucket)
        instance = instance_policy(self.deployment, self.account)
        trust = trust_policy(self.principal, self.external_id)
        return [
            Step(
                f"create IAM role {self.path}{self.control_role}, assumable by "
                f"{self.principal} with the ExternalId",
                lambda: self._role(self.control_role, trust, "Billow control plane"),
                trust,
            ),
            Step(
                f"attach policy billow-control to {self.control_role}",
                lambda: self._inline(self.control_role, "billow-control", control),
                control,
            ),
            Step(
                f"create IAM role {self.path}{self.instance_role} for cluster VMs",
                lambda: self._role(self.instance_role, EC2_TRUST, "Billow cluster instances"),
                EC2_TRUST,
            ),
            Step(
                f"attach policy billow-instance-logs to {self.instance_role}",
                lambda: self._inline(self.instance_role, "billow-instance-logs", instance),
                instance,
            ),
            Step(
                f"create instance profile {self.path}{self.instance_role} with that role",
                self._profile,
            ),
            Step(f"create log group {self.log_group}", self._log_group),
        ]

    def _role(self, name: str, trust: dict[str, Any], description: str) -> None:
        try:
            self.iam.create_role(
                RoleName=name,
                Path=self.path,
                AssumeRolePolicyDocument=json.dumps(trust),
                Description=description,
                Tags=self.tags,
            )
        except self.iam.exceptions.EntityAlreadyExistsException:
            self.iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))

    def _inline(self, role: str, name: str, policy: dict[str, Any]) -> None:
        self.iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(policy))

    def _profile(self) -> None:
        with contextlib.suppress(self.iam.exceptions.EntityAlreadyExistsException):
            self.iam.create_instance_profile(
                InstanceProfileName=self.instance_role, Path=self.path, Tags=self.tags
            )
        found = self.iam.get_instance_profile(InstanceProfileName=self.instance_role)
        if not found["InstanceProfile"]["Roles"]:
            self.iam.add_role_to_instance_profile(
                InstanceProfileName=self.instance_role, RoleName=self.instance_role
            )

    def _log_group(self) -> None:
        tags = {t["Key"]: t["Value"] for t in self.tags}
        with contextlib.suppress(self.logs.exceptions.ResourceAlreadyExistsException):
            self.logs.create_log_group(logGroupName=self.log_group, tags=tags)

    def remove(self) -> list[str]:
        """Delete what setup created for the deployment (under its IAM path, and its log
        group when setup tagged it); returns what was deleted."""
        gone: list[str] = []
        profiles = self.iam.list_instance_profiles(PathPrefix=self.path)["InstanceProfiles"]
        for profile in profiles:
            for role in profile["Roles"]:
                self.iam.remove_role_from_instance_profile(
                    InstanceProfileName=profile["InstanceProfileName"], RoleName=role["RoleName"]
                )
            self.iam.delete_instance_profile(InstanceProfileName=profile["InstanceProfileName"])
            gone.append(f"instance profile {profile['InstanceProfileName']}")
        for role in self.iam.list_roles(PathPrefix=self.path)["Roles"]:
            name = role["RoleName"]
            for policy in self.iam.list_role_policies(RoleName=name)["PolicyNames"]:
                self.iam.delete_role_policy(RoleName=name, PolicyName=policy)
            self.iam.delete_role(RoleName=name)
            gone.append(f"role {name}")
        groups = self.logs.describe_log_groups(logGroupNamePrefix=self.log_group)["logGroups"]
        for group in groups:
            if group["logGroupName"] != self.log_group:
                continue
            tags = self.logs.list_tags_log_group(logGroupName=self.log_group).get("tags", {})
            if tags.get(SETUP_TAG) == self.deployment:
                self.logs.delete_log_group(logGroupName=self.log_group)
                gone.append(f"log group {self.log_group}")
        return gone
