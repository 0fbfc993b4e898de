"""``billow.list_instance_types`` on a deployment without cloud machines: a clear refusal
(the AWS route itself is tested over moto in tests/integration/test_aws_handlers.py)."""

from __future__ import annotations

import pytest

import billow
from tests.support.processes import EmbeddedServer

pytestmark = [pytest.mark.e2e]


def test_the_embedded_server_has_no_instance_types(embedded_server: EmbeddedServer) -> None:
    with pytest.raises(billow.BillowAPIError) as refused:
        billow.list_instance_types(cores=4, server=embedded_server.url, token=embedded_server.token)
    assert refused.value.status == 409 and "local processes" in refused.value.message
    with pytest.raises(billow.ValidationError) as invalid:
        billow.list_instance_types(
            arch="sparc", server=embedded_server.url, token=embedded_server.token
        )
    assert invalid.value.status == 422 and "arch" in str(invalid.value)
