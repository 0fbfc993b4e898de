"""The AWS deployment artifacts package, lint and validate offline.

``osls package`` turns serverless.yml into the CloudFormation template that ``osls deploy``
would submit; cfn-lint checks it against the CloudFormation resource schemas; asl-validator
checks the state machine definitions. No AWS account is touched: the credentials are dummies
and the AWS SDK's endpoint is moto_server on 127.0.0.1 (AWS_ENDPOINT_URL), the only AWS call
packaging makes being CloudFormation DescribeStacks for the layer; the machine has no other
network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.integration

TOOLS_BIN = ROOT / ".tools" / "node_modules" / ".bin"
STATE_MACHINES = sorted((ROOT / "infra" / "statemachines").glob("*.json"))
CUSTOMER_POLICY = ROOT / "infra" / "iam" / "customer-role-policy.json"
STAGE = "test"
FUNCTIONS = {"api", "reconcile", "reaper", "events", "bootstrap"}
# Functions that reach the whole store (bootstrap writes only the first admin).
STORE_FUNCTIONS = FUNCTIONS - {"bootstrap"}
LAMBDA_RETRY_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}
REQUIRED_ENV = {
    "BILLOW_TABLE",
    "BILLOW_CONTROL_URL",
    "BILLOW_AMI_ID",
    "BILLOW_INSTANCE_TYPES",
    "BILLOW_STATE_MACHINE_ARN",
    "BILLOW_EVENT_BUS",
    "BILLOW_KMS_KEY_ID",
    "BILLOW_DEPLOYMENT",
    "BILLOW_ENV_BUCKET",
    "BILLOW_AGENT_WHEEL",
    "BILLOW_UV_SHA256",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
}
# cfn-lint's exit code is a bit field: 2 errors, 4 warnings, 8 informational; anything else
# (1, or a crash) means it could not lint.
CFN_LINT_ERROR = 2
CFN_LINT_NON_ERROR_BITS = 4 | 8


def _run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    command = " ".join(map(str, proc.args))
    return f"$ {command}\n(exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="session")
def deploy_tools() -> Path:
    """Run scripts/install-deploy-tools.sh (idempotent); return the venv's bin directory."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is not on PATH: the deploy checks need Node.js 20+ and npm to install "
                "osls, serverless-step-functions and asl-validator "
                "(scripts/install-deploy-tools.sh)",
                pytrace=False,
            )
    venv = Path(sys.prefix)
    proc = _run(
        ["bash", str(ROOT / "scripts" / "install-deploy-tools.sh")],
        timeout=900,
        env={**os.environ, "VENV": str(venv)},
    )
    assert proc.returncode == 0, "install-deploy-tools.sh failed\n" + _explain(proc)
    return venv / "bin"


@pytest.fixture(scope="session")
def lambda_layer(deploy_tools: Path) -> Path:
    """Run scripts/build-lambda-layer.sh (idempotent); return the layer's python/ dir."""
    proc = _run(
        ["bash", str(ROOT / "scripts" / "build-lambda-layer.sh")],
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "VENV": sys.prefix},
    )
    assert proc.returncode == 0, "build-lambda-layer.sh failed\n" + _explain(proc)
    return ROOT / ".build" / "lambda-layer" / "python"


@pytest.fixture(scope="session")
def package_dir(
    deploy_tools: Path, lambda_layer: Path, moto_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``osls package`` of serverless.yml into a temporary directory.

    Packaging a layer asks CloudFormation whether the stack already carries it
    (DescribeStacks); the AWS SDK is pointed at moto_server, which answers that the stack
    does not exist."""
    out = tmp_path_factory.mktemp("sls-package")
    home = tmp_path_factory.mktemp("sls-home")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SLS_"))},
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_EC2_METADATA_DISABLED": "true",
        "SLS_TELEMETRY_DISABLED": "1",
        "SLS_NOTIFICATIONS_MODE": "off",
        "HOME": str(home),  # osls keeps its state under ~/.serverless
        "AWS_ENDPOINT_URL": moto_url,
    }
    proc = _run(
        [
            str(TOOLS_BIN / "osls"),
            "package",
            "--stage",
            STAGE,
            "--region",
            "us-east-1",
            "--package",
            str(out),
        ],
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, "osls package failed\n" + _explain(proc)
    return out


@pytest.fixture(scope="session")
def template(package_dir: Path) -> dict[str, Any]:
    return json.loads((package_dir / "cloudformation-template-update-stack.json").read_text())


def _resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def _function(template: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    for logical_id, res in _resources(template, "AWS::Lambda::Function").items():
        if res["Properties"]["FunctionName"] == f"billow-{STAGE}-{name}":
            return logical_id, res
    raise AssertionError(f"no Lambda function {name!r} in the template")


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def _role_of(template: dict[str, Any], name: str) -> dict[str, Any]:
    _, fn = _function(template, name)
    role_id = fn["Properties"]["Role"]["Fn::GetAtt"][0]
    return template["Resources"][role_id]


def _state_machine_definition(template: dict[str, Any]) -> dict[str, Any]:
    (machine,) = _resources(template, "AWS::StepFunctions::StateMachine").values()
    sub = machine["Properties"]["DefinitionString"]["Fn::Sub"]
    text = sub[0] if isinstance(sub, list) else sub
    return json.loads(text)


def _cfn_lint(bin_dir: Path, path: Path) -> None:
    proc = _run([str(bin_dir / "cfn-lint"), "--format", "parseable", str(path)], timeout=300)
    rc = proc.returncode
    assert not rc & CFN_LINT_ERROR and not rc & ~(CFN_LINT_ERROR | CFN_LINT_NON_ERROR_BITS), (
        "cfn-lint reported errors\n" + _explain(proc)
    )


# -- the tools ------------------------------------------------------------------------------


def test_package_produces_a_template_and_a_code_artifact(
    package_dir: Path, template: dict[str, Any]
) -> None:
    assert (package_dir / "billow.zip").stat().st_size > 0
    functions = _resources(template, "AWS::Lambda::Function").values()
    names = {r["Properties"]["FunctionName"] for r in functions}
    assert names == {f"billow-{STAGE}-{f}" for f in FUNCTIONS}
    for name in FUNCTIONS:
        _, fn = _function(template, name)
        assert fn["Properties"]["Runtime"] == "python3.11"
        assert fn["Properties"]["Handler"] == f"functions/aws.{name}_handler"


def test_cfn_lint_finds_no_errors_in_the_template(deploy_tools: Path, package_dir: Path) -> None:
    _cfn_lint(deploy_tools, package_dir / "cloudformation-template-update-stack.json")


def test_state_machines_pass_asl_validator(deploy_tools: Path) -> None:
    assert STATE_MACHINES, "no state machine definitions under infra/statemachines/"
    for path in STATE_MACHINES:
        proc = _run([str(TOOLS_BIN / "asl-validator"), "--json-path", str(path)], timeout=120)
        assert proc.returncode == 0, f"{path.name} is not valid ASL\n" + _explain(proc)


def test_customer_role_policy_is_valid_iam_without_data_plane_access(
    deploy_tools: Path, tmp_path: Path
) -> None:
    policy = json.loads(CUSTOMER_POLICY.read_text())
    wrapper = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {
            "CustomerPolicy": {
                "Type": "AWS::IAM::ManagedPolicy",
                "Properties": {"PolicyDocument": policy},
            }
        },
    }
    path = tmp_path / "customer-policy.json"
    path.write_text(json.dumps(wrapper))
    _cfn_lint(deploy_tools, path)

    actions = [a for s in policy["Statement"] for a in _actions(s)]
    assert {a.split(":")[0] for a in actions} == {"ec2", "logs", "iam"}
    assert not [a for a in actions if "*" in a], "wildcard actions"
    for s in policy["Statement"]:
        assert s["Effect"] == "Allow"
        mutating = [a for a in _actions(s) if not a.startswith("ec2:Describe")]
        if s["Resource"] == "*":
            assert not mutating, f"{s['Sid']} grants {mutating} on every resource"
    (pass_role,) = [s for s in policy["Statement"] if "iam:PassRole" in _actions(s)]
    assert pass_role["Resource"] != "*"
    assert pass_role["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"
    terminate = [s for s in policy["Statement"] if "ec2:TerminateInstances" in _actions(s)]
    assert terminate and all(
        "aws:ResourceTag/billow:deployment" in json.dumps(s["Condition"]) for s in terminate
    )


# -- what a reviewer of the template cares about --------------------------------------------


def test_every_function_has_its_own_least_privilege_role(template: dict[str, Any]) -> None:
    roles = {}
    for name in FUNCTIONS:
        _, fn = _function(template, name)
        ref = fn["Properties"]["Role"]
        assert set(ref) == {"Fn::GetAtt"}, f"{name} does not use a role from this stack"
        roles[name] = ref["Fn::GetAtt"][0]
    assert len(set(roles.values())) == len(FUNCTIONS), f"functions share roles: {roles}"
    assert "IamRoleLambdaExecution" not in template["Resources"]
    for name, role_id in roles.items():
        role = template["Resources"][role_id]
        assert role["Type"] == "AWS::IAM::Role"
        trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert [s["Principal"] for s in trust] == [{"Service": "lambda.amazonaws.com"}]
        for s in _statements(role):
            assert not [a for a in _actions(s) if a.endswith(":*") or a == "*"], (name, s)
            if s["Resource"] == "*":
                assert all(":Describe" in a for a in _actions(s)), (name, s)


def test_roles_grant_what_each_function_needs(template: dict[str, Any]) -> None:
    def actions(name: str) -> set[str]:
        return {a for s in _statements(_role_of(template, name)) for a in _actions(s)}

    assert {
        "dynamodb:UpdateItem",
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:GenerateDataKey",  # envelopes of secrets above 4 KiB (adapters/aws/kms_box.py)
        "states:StartExecution",
        "events:PutEvents",
        "ec2:DescribeInstances",  # cluster logs list the cluster's instances
        "ec2:DescribeInstanceTypes",  # a create no machine fits is a 422; /v1/instance-types
    } <= actions("api")
    assert {
        "dynamodb:UpdateItem",
        "events:PutEvents",
        "ec2:RunInstances",
        "ec2:CreateTags",
        "ec2:TerminateInstances",
        "ec2:DescribeInstances",
        "iam:PassRole",
    } <= actions("reconcile")
    assert {
        "dynamodb:Query",
        "dynamodb:Scan",  # the sparse active index, for every owner
        "ec2:DescribeInstances",
        "ec2:TerminateInstances",
        "ec2:DeleteLaunchTemplate",
        "ec2:DeleteSecurityGroup",
        "states:StartExecution",
        "events:PutEvents",
    } <= actions("reaper")
    assert {"dynamodb:UpdateItem", "states:StartExecution"} <= actions("events")
    # Express executions cannot be listed or described; the loop's lease replaces both.
    for name in FUNCTIONS:
        assert not {"states:ListExecutions", "states:DescribeExecution"} & actions(name), name
    assert not actions("events") & {"ec2:RunInstances", "ec2:TerminateInstances", "kms:Decrypt"}
    assert "ec2:RunInstances" not in actions("api")
    # The reaper launches warm-pool instances (tagged with this deployment, like every
    # launch) but never takes one for a cluster: only reconcile starts, modifies, untags.
    take = {"ec2:StartInstances", "ec2:ModifyInstanceAttribute", "ec2:DeleteTags"}
    assert take <= actions("reconcile") and not take & actions("reaper")
    assert "ec2:StopInstances" not in actions("reconcile") | actions("reaper")
    deployment_tag = {"aws:RequestTag/billow:deployment": f"billow-{STAGE}"}
    reaper_launches = [
        s
        for s in _statements(_role_of(template, "reaper"))
        if "ec2:RunInstances" in _actions(s) and "instance/*" in json.dumps(s["Resource"])
    ]
    assert reaper_launches
    assert all(s["Condition"]["StringEquals"] == deployment_tag for s in reaper_launches)
    # Only the API seals and opens cluster secrets; reconcile and reaper never do.
    kms_actions = {"kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"}
    assert not (actions("reconcile") | actions("reaper")) & kms_actions
    (kms,) = [s for s in _statements(_role_of(template, "api")) if "kms:Decrypt" in _actions(s)]
    context = {"kms:EncryptionContext:billow:deployment": f"billow-{STAGE}"}
    assert kms["Condition"]["StringEquals"] == context

    reconcile = _statements(_role_of(template, "reconcile"))
    # The default image of each architecture: the public Amazon Linux 2023 parameters only.
    (images,) = [s for s in reconcile if "ssm:GetParameter" in _actions(s)]
    assert _actions(images) == ["ssm:GetParameter"]
    assert json.dumps(images["Resource"]).endswith(
        '::parameter/aws/service/ami-amazon-linux-latest/*"}'
    )
    deployment = {"aws:RequestTag/billow:deployment": f"billow-{STAGE}"}
    launches = [s for s in reconcile if "ec2:RunInstances" in _actions(s)]
    tagged = [s for s in launches if s.get("Condition", {}).get("StringEquals") == deployment]
    assert any("instance/*" in json.dumps(s["Resource"]) for s in tagged), (
        "instances may be launched without this deployment's billow:deployment tag"
    )
    for s in reconcile:
        if {"ec2:TerminateInstances", "ec2:CreateTags"} & set(_actions(s)):
            assert "Condition" in s, s
        if "ec2:DeleteTags" in _actions(s):  # the warm pool's tag, on this deployment's
            assert s["Condition"]["ForAllValues:StringEquals"] == {"aws:TagKeys": ["billow:pool"]}
            assert "aws:ResourceTag/billow:deployment" in s["Condition"]["StringEquals"]
        if "iam:PassRole" in _actions(s):
            assert s["Resource"] == {"Fn::GetAtt": ["InstanceRole", "Arn"]}
            assert s["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"


def test_functions_get_the_deployment_environment(template: dict[str, Any]) -> None:
    for name in FUNCTIONS:
        _, fn = _function(template, name)
        env = fn["Properties"]["Environment"]["Variables"]
        assert set(env) >= REQUIRED_ENV, f"{name} lacks {REQUIRED_ENV - set(env)}"
        assert env["BILLOW_DEPLOYMENT"] == f"billow-{STAGE}"
        assert env["BILLOW_STATE_MACHINE_ARN"] == {"Ref": "ClusterLifecycleStateMachine"}
        assert env["BILLOW_ENV_BUCKET"] == {"Ref": "EnvBucket"}
        # Set by --param after scripts/upload-instance-kit.sh; empty (not absent) before.
        assert env["BILLOW_AGENT_WHEEL"] == env["BILLOW_UV_SHA256"] == ""
        # Clusters in this account unless `billow setup aws` values are passed as params.
        assert env["BILLOW_ASSUME_ROLE_ARN"] == env["BILLOW_EXTERNAL_ID"] == ""
        assert env["BILLOW_INSTANCE_LOG_GROUP"] == f"/billow/{STAGE}/instances"
        assert env["BILLOW_INSTANCE_PROFILE_ARN"] == {
            "Fn::If": ["OwnInstanceProfile", {"Fn::GetAtt": ["InstanceProfile", "Arn"]}, ""]
        }
    assert template["Conditions"]["OwnInstanceProfile"] == {"Fn::Equals": ["", ""]}


def test_every_function_logs_to_a_group_with_retention(template: dict[str, Any]) -> None:
    groups = {
        g["Properties"]["LogGroupName"]: g["Properties"].get("RetentionInDays")
        for g in _resources(template, "AWS::Logs::LogGroup").values()
    }
    for name in FUNCTIONS:
        assert groups.get(f"/aws/lambda/billow-{STAGE}-{name}") == 14, groups


def _store_models() -> dict[str, Any]:
    """The store's own table definitions (pynamodb models), by table name."""
    from billow_control.adapters.aws.dynamodb import DynamoDBStore, table_names

    store = DynamoDBStore(f"billow-{STAGE}-", host="http://127.0.0.1:9")  # makes no call
    return dict(zip(table_names(store), store.models.all(), strict=True))


def _key_set(schema: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(k["AttributeName"], k["KeyType"]) for k in schema}


def _attribute_set(definitions: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(a["AttributeName"], a["AttributeType"]) for a in definitions}


def test_tables_are_the_ones_the_store_uses(template: dict[str, Any]) -> None:
    tables = {
        t["Properties"]["TableName"]: t
        for t in _resources(template, "AWS::DynamoDB::Table").values()
    }
    models = _store_models()
    idempotency = f"billow-{STAGE}-idempotency"
    assert set(tables) == set(models) | {idempotency}
    for name, model in models.items():
        props, schema = tables[name]["Properties"], model._get_schema()
        assert _key_set(props["KeySchema"]) == _key_set(schema["key_schema"]), name
        assert _attribute_set(props["AttributeDefinitions"]) == _attribute_set(
            schema["attribute_definitions"]
        ), name
        indexes = {
            i["IndexName"]: (_key_set(i["KeySchema"]), i["Projection"])
            for i in props.get("GlobalSecondaryIndexes", [])
        }
        assert indexes == {
            i["index_name"]: (_key_set(i["key_schema"]), i["projection"])
            for i in schema["global_secondary_indexes"]
        }, name
        # TTL exactly where the store writes expires_at_epoch.
        ttl = props.get("TimeToLiveSpecification")
        if "expires_at_epoch" in model.get_attributes():
            assert ttl == {"AttributeName": "expires_at_epoch", "Enabled": True}, name
        else:
            assert ttl is None, name
    expiring = ("clusters", "cluster-keys", "instance-credentials", "reconcile-loops")
    assert {n for n, t in tables.items() if "TimeToLiveSpecification" in t["Properties"]} == {
        f"billow-{STAGE}-{s}" for s in expiring
    } | {idempotency}
    idem = tables[idempotency]["Properties"]
    assert idem["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert idem["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    for name, table in tables.items():
        props = table["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST", name
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert table.get("DeletionPolicy") == "Retain", name


def test_clusters_table_has_the_sparse_active_index(template: dict[str, Any]) -> None:
    (clusters,) = [
        t["Properties"]
        for t in _resources(template, "AWS::DynamoDB::Table").values()
        if t["Properties"]["TableName"] == f"billow-{STAGE}-clusters"
    ]
    indexes = {i["IndexName"]: i["KeySchema"] for i in clusters["GlobalSecondaryIndexes"]}
    assert indexes["active-by-owner"] == [
        {"AttributeName": "active_owner", "KeyType": "HASH"},
        {"AttributeName": "created_us", "KeyType": "RANGE"},
    ]
    assert indexes["by-owner"][0] == {"AttributeName": "owner", "KeyType": "HASH"}
    # Sparse: active_owner is only an index key, never a key of the table itself, so
    # finished clusters (the store removes the attribute) stay out of the index.
    assert "active_owner" not in {k["AttributeName"] for k in clusters["KeySchema"]}


API_ONLY_TABLES = {"software-environments"}


def test_store_permissions_cover_every_table_and_index(template: dict[str, Any]) -> None:
    tables = _resources(template, "AWS::DynamoDB::Table")
    api_only = {
        logical_id
        for logical_id, t in tables.items()
        if t["Properties"]["TableName"] in {f"billow-{STAGE}-{s}" for s in API_ONLY_TABLES}
    }
    assert len(api_only) == len(API_ONLY_TABLES)
    table_ids = {
        logical_id
        for logical_id, t in tables.items()
        if not t["Properties"]["TableName"].endswith("-idempotency")
    } - api_only
    for name in STORE_FUNCTIONS:
        statements = _statements(_role_of(template, name))
        (store,) = [s for s in statements if s.get("Sid") == "Store"]
        text = json.dumps(store["Resource"])
        granted = {r["Fn::GetAtt"][0] for r in store["Resource"] if "Fn::GetAtt" in r}
        assert granted == table_ids, name
        assert "ClustersTable.Arn}/index/*" in text, name
        # Tables of API-only resources (software environments) are granted to the API
        # function alone, in a statement of their own.
        everything = json.dumps(statements)
        for logical_id in api_only:
            assert (logical_id in everything) == (name == "api"), (name, logical_id)
    (envs,) = [
        s for s in _statements(_role_of(template, "api")) if s.get("Sid") == "SoftwareEnvironments"
    ]
    assert {r["Fn::GetAtt"][0] for r in envs["Resource"]} == api_only
    assert {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:DeleteItem"} <= set(
        _actions(envs)
    )


def test_reaper_runs_every_minute(template: dict[str, Any]) -> None:
    reaper_id, _ = _function(template, "reaper")
    schedules = [
        r["Properties"]
        for r in _resources(template, "AWS::Events::Rule").values()
        if "ScheduleExpression" in r["Properties"]
    ]
    assert [s["ScheduleExpression"] for s in schedules] == ["rate(1 minute)"]
    assert reaper_id in json.dumps(schedules[0]["Targets"])


def test_commands_on_the_deployment_bus_reach_the_events_function(template: dict[str, Any]) -> None:
    events_id, _ = _function(template, "events")
    (bus,) = _resources(template, "AWS::Events::EventBus").values()
    assert bus["Properties"]["Name"] == f"billow-{STAGE}"
    rules = [
        r["Properties"]
        for r in _resources(template, "AWS::Events::Rule").values()
        if "EventPattern" in r["Properties"]
    ]
    assert len(rules) == 1
    assert rules[0]["EventPattern"] == {"detail-type": ["billow.command"]}
    assert rules[0]["EventBusName"] == {"Fn::GetAtt": ["EventBus", "Name"]}
    assert events_id in json.dumps(rules[0]["Targets"])


def test_the_first_admin_comes_only_from_a_directly_invoked_function(
    template: dict[str, Any],
) -> None:
    """``billow admin bootstrap`` finds the bootstrap function in the stack's outputs and
    invokes it with the deployer's AWS credentials: no route, rule or permission lets
    anything else invoke it, and its role writes users and their tokens, nothing else."""
    bootstrap_id, _ = _function(template, "bootstrap")
    outputs = template["Outputs"]
    assert outputs["BootstrapFunctionName"]["Value"] == {"Ref": bootstrap_id}
    invokers = [
        r
        for r in template["Resources"].values()
        if r["Type"] in ("AWS::Lambda::Permission", "AWS::ApiGatewayV2::Integration")
        or r["Type"] == "AWS::Events::Rule"
    ]
    assert bootstrap_id not in json.dumps(invokers)
    statements = _statements(_role_of(template, "bootstrap"))
    granted = {a for s in statements for a in _actions(s)}
    assert granted == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "dynamodb:GetItem",
        "dynamodb:Scan",
        "dynamodb:PutItem",
        "dynamodb:ConditionCheckItem",
    }
    (users,) = [s for s in statements if s.get("Sid") == "Users"]
    assert {r["Fn::GetAtt"][0] for r in users["Resource"]} == {
        "UsersTable",
        "UserNamesTable",
        "ApiTokensTable",
    }


def test_http_api_routes_v1_to_the_api_function(template: dict[str, Any]) -> None:
    routes = [
        r["Properties"]["RouteKey"]
        for r in _resources(template, "AWS::ApiGatewayV2::Route").values()
    ]
    # the API, and the dashboard's static files (GET only), all to the one function
    assert sorted(routes) == ["ANY /v1/{proxy+}", "GET /ui", "GET /ui/{proxy+}"]


def test_secrets_key_rotates_and_has_an_alias(template: dict[str, Any]) -> None:
    ((key_id, key),) = _resources(template, "AWS::KMS::Key").items()
    assert key["Properties"]["EnableKeyRotation"] is True
    (alias,) = _resources(template, "AWS::KMS::Alias").values()
    assert alias["Properties"] == {
        "AliasName": f"alias/billow-{STAGE}",
        "TargetKeyId": {"Ref": key_id},
    }


def test_state_machine_is_an_express_loop_that_retries_lambda_errors(
    template: dict[str, Any],
) -> None:
    definition = _state_machine_definition(template)
    (machine,) = _resources(template, "AWS::StepFunctions::StateMachine").values()
    props = machine["Properties"]
    substitutions = props["DefinitionString"]["Fn::Sub"][1]
    reconcile_arn = {
        "Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}"
        f":function:billow-{STAGE}-reconcile"
    }
    # Express: billed per execution and duration; no history, so errors go to a log group.
    assert props["StateMachineType"] == "EXPRESS"
    assert props["StateMachineName"] == f"billow-{STAGE}-cluster-loop"
    logging_config = props["LoggingConfiguration"]
    assert logging_config["Level"] == "ERROR"
    assert logging_config["IncludeExecutionData"] is False
    [destination] = logging_config["Destinations"]
    group_id = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    assert template["Resources"][group_id]["Properties"]["RetentionInDays"] == 14
    role_id = props["RoleArn"]["Fn::GetAtt"][0]
    role_actions = {a for s in _statements(template["Resources"][role_id]) for a in _actions(s)}
    assert {"lambda:InvokeFunction", "logs:CreateLogDelivery"} <= role_actions
    # Express stops an execution at 5 minutes; the reaper's resync, not a timeout,
    # restarts a loop that outlived it.
    assert "TimeoutSeconds" not in definition
    tasks = {n: s for n, s in definition["States"].items() if s["Type"] == "Task"}
    assert {"Reconcile", "MarkFailed", "Teardown"} <= set(tasks)
    for name, task in tasks.items():
        # Each step names its loop: the reconcile function renews that loop's lease.
        assert task["Parameters"]["loop.$"] == "$.loop", name
        lambda_retry = [r for r in task["Retry"] if set(r["ErrorEquals"]) == LAMBDA_RETRY_ERRORS]
        assert lambda_retry, f"{name} does not retry {LAMBDA_RETRY_ERRORS}"
        assert lambda_retry[0]["BackoffRate"] == 2
        assert lambda_retry[0]["MaxAttempts"] == 6
        assert lambda_retry[0]["JitterStrategy"] == "FULL"
        # Every task invokes the reconcile function, by a static ARN (no dependency cycle).
        placeholder = task["Resource"].removeprefix("${").removesuffix("}")
        assert substitutions[placeholder] == reconcile_arn, name
    assert tasks["Reconcile"]["Catch"][0]["ErrorEquals"] == ["States.ALL"]
    assert tasks["Reconcile"]["Catch"][0]["Next"] == "MarkFailed"
    assert tasks["MarkFailed"]["Parameters"]["action"] == "fail"
    waits = [s for s in definition["States"].values() if s["Type"] == "Wait"]
    assert waits and all(w["SecondsPath"] == "$.reconcile.wait" for w in waits)
    assert all(t["ResultPath"] == "$.reconcile" for t in tasks.values())


LAYER_IMPORT_CHECK = """
import sys
layer, root = sys.argv[1], sys.argv[2]
sys.path[:0] = [layer, root]
import functions.aws
import billow_control.runtimes.aws
import billow_control.adapters.aws.dynamodb
import billow_control.adapters.aws.ec2
import billow_control.adapters.aws.idempotency
import billow_control.adapters.aws.kms_box
import billow_control.adapters.aws.eventbridge_bus
import billow_control.adapters.aws.sfn_orchestrator
import boto3
from billow_control.api.app import build_app
build_app(lambda: None)
import json
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_lambda_code_imports_from_the_layer_alone(lambda_layer: Path) -> None:
    """What Lambda will run: the packaged code plus the layer, no site-packages (-S -I)."""
    proc = subprocess.run(
        [
            sys.base_prefix + "/bin/python3",
            "-S",
            "-I",
            "-c",
            LAYER_IMPORT_CHECK,
            str(lambda_layer),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert {"pydantic", "pynamodb", "aws_lambda_powertools", "boto3"} <= modules
    assert not modules & {"dask", "distributed", "numpy"}


def test_every_function_uses_the_dependency_layer(template: dict[str, Any]) -> None:
    (layer_id,) = _resources(template, "AWS::Lambda::LayerVersion")
    functions = _resources(template, "AWS::Lambda::Function")
    assert functions
    for name, fn in functions.items():
        assert {"Ref": layer_id} in fn["Properties"].get("Layers", []), name


# -- the environments bucket ------------------------------------------------------------


def test_env_bucket_is_private_encrypted_expiring_and_tagged(template: dict[str, Any]) -> None:
    from billow_control.adapters.aws.s3_object_store import UPLOAD_TAG

    buckets = _resources(template, "AWS::S3::Bucket")
    assert set(buckets) == {"EnvBucket", "ServerlessDeploymentBucket"}
    props = buckets["EnvBucket"]["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    (encryption,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert {"Key": "billow:deployment", "Value": f"billow-{STAGE}"} in props["Tags"]
    # Client uploads expire after 30 days; the rule matches the tag the store puts on them.
    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    expire = rules["ExpireClientUploads"]
    key, _, value = UPLOAD_TAG.partition("=")
    assert expire["Status"] == "Enabled" and expire["ExpirationInDays"] == 30
    assert expire["TagFilters"] == [{"Key": key, "Value": value}]
    assert all(r["Status"] == "Enabled" for r in rules.values())

    (policy,) = [
        p
        for p in _resources(template, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": "EnvBucket"}
    ]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert all(s["Effect"] == "Deny" for s in statements), "the bucket policy grants nothing"
    (tls,) = statements
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert "EnvBucket" in json.dumps(tls["Resource"])
    outputs = template.get("Outputs", {})
    assert outputs["EnvBucketName"]["Value"] == {"Ref": "EnvBucket"}


def test_only_the_api_reaches_the_env_bucket_and_only_its_objects(
    template: dict[str, Any],
) -> None:
    """The api function pre-signs every URL of the bucket (uploads, the kit, wheels for
    instances); the reaper only pre-signs downloads of the deployment kit (uv and the
    agent wheel) for warm-pool instances; nothing else, not even instances, holds an S3
    permission."""
    roles = {name: _role_of(template, name) for name in FUNCTIONS}
    roles["instance"] = template["Resources"]["InstanceRole"]
    granted = {
        name: [s for s in _statements(role) if any(a.startswith("s3:") for a in _actions(s))]
        for name, role in roles.items()
    }
    assert not any(granted[name] for name in roles if name not in ("api", "reaper")), granted
    (kit,) = granted["reaper"]
    assert _actions(kit) == ["s3:GetObject"] and "Condition" not in kit
    assert kit["Resource"] == {"Fn::Sub": "${EnvBucket.Arn}/objects/*"}
    actions: set[str] = set()
    for s in granted["api"]:
        assert s["Effect"] == "Allow" and "Condition" not in s
        assert all(a.startswith("s3:") for a in _actions(s)), s
        actions |= set(_actions(s))
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        for resource in resources:
            if "s3:ListBucket" in _actions(s):
                assert resource == {"Fn::GetAtt": ["EnvBucket", "Arn"]}, s
            else:  # objects only, under the store's prefix
                assert resource == {"Fn::Sub": "${EnvBucket.Arn}/objects/*"}, s
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:PutObjectTagging", "s3:ListBucket"}
