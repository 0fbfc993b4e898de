"""EC2 settings validation and the bootstrap script, without any AWS endpoint."""

from __future__ import annotations

import subprocess

import pytest
from pydantic import ValidationError

from billow_control.adapters.aws.ec2 import (
    BOOTSTRAP_ENV,
    MAX_USER_DATA,
    EC2Settings,
    idempotency_token,
    render_user_data,
)
from billow_control.adapters.aws.ec2.user_data import FETCH_KIT

pytestmark = pytest.mark.unit

ENV = {
    "BILLOW_CONTROL_URL": "https://c.test",
    "BILLOW_INSTANCE_TOKEN": "bit_x",
    "BILLOW_ROLE": "worker",
    "BILLOW_CLUSTER_ID": "c-1",
}


def settings(**kw: object) -> EC2Settings:
    base: dict[str, object] = {
        "ami_id": "ami-0123456789abcdef0",
        "instance_types": ["m6i.large"],
        "allowed_cidr": "203.0.113.7",
    }
    return EC2Settings.model_validate(base | kw)


def test_user_data_carries_only_the_bootstrap_variables() -> None:
    script = render_user_data({**ENV, "AWS_SECRET_ACCESS_KEY": "nope"}, settings())
    assert "AWS_SECRET_ACCESS_KEY" not in script and "nope" not in script
    assert all(f"export {k}=" in script for k in BOOTSTRAP_ENV)
    assert len(script.encode()) < MAX_USER_DATA


@pytest.mark.parametrize("missing", BOOTSTRAP_ENV)
def test_user_data_requires_each_bootstrap_variable(missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        render_user_data({k: v for k, v in ENV.items() if k != missing}, settings())


def test_user_data_size_is_capped() -> None:
    assert len(render_user_data(ENV, settings(log_group="/" + "g" * 500)).encode()) < 4096
    with pytest.raises(ValueError, match="must stay below 4096"):
        render_user_data({**ENV, "BILLOW_CONTROL_URL": "https://" + "c" * 1000}, settings())


def test_user_data_bootstraps_a_bare_instance_from_the_kit() -> None:
    """Nothing is pip-installed from a package index by name: uv and the billow wheel come
    from the kit route, are checked by sha256, and the agent runs from their venv."""
    script = render_user_data(ENV, settings())
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)
    compile(FETCH_KIT, "<fetch-kit>", "exec")  # the embedded snippet is valid Python
    assert "/v1/agent/kit" in FETCH_KIT and "hashlib.sha256()" in FETCH_KIT
    assert "billow[" not in script and "pip install billow" not in script
    lines = script.splitlines()
    # Root-relative paths, overridable ending and address, so tests run this script.
    assert 'R="${BILLOW_ROOT:-}"' in lines and 'B="$R/opt/billow"' in lines
    assert 'exec >>"$R/var/log/billow-agent.log" 2>&1' in lines
    assert (
        'export PYTHONUNBUFFERED=1 BILLOW_ENV_CACHE="$B/envs" BILLOW_PYTHON_DOWNLOADS=automatic'
        in (lines)
    )  # instances may fetch the cluster's Python (AL2023 has 3.9)
    assert lines.index("umask 077") < lines.index('mkdir -p "$R/var/log" "$B"')
    assert lines[-1].startswith("${BILLOW_SHUTDOWN:-shutdown -h now}")
    assert 'export BILLOW_HOST="${BILLOW_HOST:-0.0.0.0}"' in lines
    assert "UV_PYTHON_DOWNLOADS" not in script  # uv may fetch a Python on a bare image
    run = next(line for line in lines if line.startswith("python3 - "))
    assert run.endswith('&& "$B/agent/bin/python" -m billow.agent')


def test_settings_name_the_bad_field() -> None:
    with pytest.raises(ValidationError, match="instance_types"):
        settings(instance_types=["not a type"])
    with pytest.raises(ValidationError, match="allowed_cidr"):
        settings(allowed_cidr="everyone")
    with pytest.raises(ValidationError, match="must differ"):
        settings(dashboard_port=8786)
    with pytest.raises(ValidationError, match="purchase"):
        settings(purchase="reserved")
    assert settings().allowed_cidr == "203.0.113.7/32"


def test_idempotency_token_is_stable_and_short() -> None:
    token = idempotency_token("c-1-g1-worker-" + "9" * 200, "spot")
    assert token == idempotency_token("c-1-g1-worker-" + "9" * 200, "spot")
    assert token != idempotency_token("c-1-g1-worker-" + "9" * 200, "on-demand")
    assert len(token) <= 64 and token.isascii()
