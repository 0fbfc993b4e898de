from __future__ import annotations

import pytest

from billow.config import _env_overrides

pytestmark = pytest.mark.unit


def test_billow_environment_variables_map_to_config_keys() -> None:
    env = {
        "BILLOW_IDLE_TIMEOUT": "5m",
        "BILLOW_SHOW_PROGRESS": "false",
        "OTHER": "x",
        "BILLOW_INSTANCE_TOKEN": "secret",
    }
    assert _env_overrides(env) == {"idle-timeout": "5m", "show-progress": False}


def test_unquoted_off_means_analytics_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import dask.config

    from billow import config

    with dask.config.set({"billow.analytics": False}):
        assert config.analytics_level() == "off"
    with dask.config.set({"billow.analytics": "full"}):
        assert config.analytics_level() == "full"
