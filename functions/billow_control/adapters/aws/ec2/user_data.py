"""The instance bootstrap script (EC2 user data).

It carries only the control-plane URL and the one-time instance token; the agent trades
the token for certificates and configuration over HTTPS, so no secret beyond that token
ever reaches EC2's instance attributes.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping

from .settings import EC2Settings

MAX_USER_DATA = 4096  # bytes of script; EC2 allows 16 KB, we stay far below it
BOOTSTRAP_ENV = ("BILLOW_CONTROL_URL", "BILLOW_INSTANCE_TOKEN", "BILLOW_ROLE", "BILLOW_CLUSTER_ID")
AGENT_LOG = "/var/log/billow-agent.log"
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
    missing = [k for k in BOOTSTRAP_ENV if not environment.get(k)]
    if missing:
        raise ValueError(f"instance environment lacks {', '.join(missing)}")
    env = {k: environment[k] for k in BOOTSTRAP_ENV}
    env |= {
        "BILLOW_HOST": "0.0.0.0",
        "BILLOW_SCHEDULER_PORT": str(settings.scheduler_port),
        "BILLOW_DASHBOARD_PORT": str(settings.dashboard_port),
        "PYTHONUNBUFFERED": "1",
    }
    lines = [
        "#!/bin/bash",
        "# Billow bootstrap: only the control-plane URL and a one-time token travel here;",
        "# the agent trades the token for certificates and configuration over HTTPS.",
        f"exec >>{AGENT_LOG} 2>&1",
        "umask 077",
        *(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
        "if command -v dnf >/dev/null; then",
        "  dnf install -y -q python3.11 python3.11-pip amazon-cloudwatch-agent || true",
        "fi",
        f"if [ -x {_CW_CTL} ]; then",
        "  cat >/opt/billow-logs.json <<'BILLOW_LOGS'",
        _logs_config(settings.log_group),
        "BILLOW_LOGS",
        f"  {_CW_CTL} -a fetch-config -m ec2 -s -c file:/opt/billow-logs.json || true",
        "fi",
        "PY=$(command -v python3.12 || command -v python3.11 || command -v python3)",
        '"$PY" -m venv /opt/billow'
        f" && /opt/billow/bin/pip install -q {shlex.quote(settings.python_package_spec)}"
        " && /opt/billow/bin/python -m billow.agent",
        'echo "billow: agent exited with code $?"',
        "sleep 15  # let the log agent ship the last lines",
        "shutdown -h now  # InstanceInitiatedShutdownBehavior=terminate",
        "",
    ]
    script = "\n".join(lines)
    size = len(script.encode())
    if size >= MAX_USER_DATA:
        raise ValueError(f"user data is {size} bytes; it must stay below {MAX_USER_DATA}")
    return script


def _logs_config(log_group: str) -> str:
    """CloudWatch agent configuration shipping ``AGENT_LOG`` to ``log_group``, one stream
    per instance (named after its id, which ``EC2Provider.tail_logs`` reads)."""
    collect = {
        "file_path": AGENT_LOG,
        "log_group_name": log_group,
        "log_stream_name": "{instance_id}",
    }
    return json.dumps({"logs": {"logs_collected": {"files": {"collect_list": [collect]}}}})
