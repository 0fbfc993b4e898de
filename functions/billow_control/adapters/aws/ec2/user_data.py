"""The instance bootstrap script as EC2 user data.

The script itself (what it carries, how it fetches the kit and runs the agent) is shared
with Compute Engine: see ``adapters/instance_bootstrap.py``. EC2 adds the CloudWatch
agent shipping ``AGENT_LOG`` to the deployment's log group, one stream per instance, and
ends with ``shutdown -h now`` (``InstanceInitiatedShutdownBehavior=terminate``). Tests
run this very script on one machine (``tests/support/aws.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ...instance_bootstrap import (
    AGENT_HOME,
    AGENT_LOG,
    BOOTSTRAP_ENV,
    FETCH_KIT,
    bootstrap_script,
)
from .settings import EC2Settings

__all__ = ["AGENT_HOME", "AGENT_LOG", "BOOTSTRAP_ENV", "FETCH_KIT", "render_user_data"]

MAX_USER_DATA = 4096  # bytes of script; EC2 allows 16 KB, we stay far below it
_SHUTDOWN = "${BILLOW_SHUTDOWN:-shutdown -h now}  # InstanceInitiatedShutdownBehavior=terminate"
_CW_CTL = "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl"


def render_user_data(environment: Mapping[str, str], settings: EC2Settings) -> str:
    """The bootstrap script: the four ``BOOTSTRAP_ENV`` variables of ``environment`` and
    nothing else secret.

    Raises
    ------
    ValueError
        If one of ``BOOTSTRAP_ENV`` is missing or empty, or the script would reach
        ``MAX_USER_DATA`` bytes.
    """
    log_setup = [
        'if [ -z "$R" ] && command -v dnf >/dev/null; then',
        "  dnf install -y -q amazon-cloudwatch-agent || true",
        "fi",
        f'if [ -x "$R{_CW_CTL}" ]; then',
        "  cat >\"$R/opt/billow-logs.json\" <<'BILLOW_LOGS'",
        _logs_config(settings.log_group),
        "BILLOW_LOGS",
        f'  "$R{_CW_CTL}" -a fetch-config -m ec2 -s -c "file:$R/opt/billow-logs.json" || true',
        "fi",
    ]
    return bootstrap_script(
        environment,
        scheduler_port=settings.scheduler_port,
        dashboard_port=settings.dashboard_port,
        log_setup=log_setup,
        shutdown=_SHUTDOWN,
        max_bytes=MAX_USER_DATA,
        defaults={"BILLOW_IMDS_ENDPOINT": "http://169.254.169.254"},  # addresses (IMDSv2)
    )


def _logs_config(log_group: str) -> str:
    """CloudWatch agent configuration shipping ``AGENT_LOG`` to ``log_group``, one stream
    per instance (named after its id, which ``EC2Provider.tail_logs`` reads)."""
    collect = {
        "file_path": AGENT_LOG,
        "log_group_name": log_group,
        "log_stream_name": "{instance_id}",
    }
    return json.dumps({"logs": {"logs_collected": {"files": {"collect_list": [collect]}}}})
