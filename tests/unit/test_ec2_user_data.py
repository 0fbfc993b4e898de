"""EC2 settings validation and the bootstrap script, without any AWS endpoint."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from billow_control.adapters.aws.ec2 import (
    BOOTSTRAP_ENV,
    MAX_USER_DATA,
    EC2Settings,
    idempotency_token,
    render_user_data,
)

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
    with pytest.raises(ValueError, match="must stay below 4096"):
        render_user_data(ENV, settings(python_package_spec="billow==" + "1" * 4000))


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
