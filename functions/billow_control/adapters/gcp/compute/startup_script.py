"""The instance bootstrap script as Compute Engine metadata ``startup-script``.

The script (what it carries, how it fetches the kit and runs the agent) is shared with
EC2: see ``adapters/instance_bootstrap.py``. It carries only the control-plane URL, the
one-time token, the role and the cluster id. Compute Engine adds:

* **Logs.** The Ops Agent ships ``AGENT_LOG`` to Cloud Logging as the log
  ``GceSettings.log_name`` of the ``gce_instance`` resource; the agent labels every entry
  ``compute.googleapis.com/resource_name`` (the instance name) and the script's
  ``modify_fields`` processor adds ``billow-cluster-id`` and ``billow-role``.
  ``GceProvider.tail_logs`` reads them back by instance name, also after the instance is
  gone (Cloud Logging keeps them for its retention period). The script installs the Ops
  Agent when the image lacks it and the instance is real (``$BILLOW_ROOT`` empty).
* **The ending.** ``shutdown -h now`` stops the instance (``TERMINATED``); the provider
  deletes stopped instances (``terminate``, and the sweep of finished clusters).
"""

from __future__ import annotations

from collections.abc import Mapping

from ....core import tags as billow_tags
from ...instance_bootstrap import AGENT_LOG, BOOTSTRAP_ENV, bootstrap_script, check_environment
from .labels import label_value
from .logs import STARTED
from .settings import GceSettings

__all__ = ["AGENT_LOG", "BOOTSTRAP_ENV", "MAX_STARTUP_SCRIPT", "OPS_AGENT_CONFIG", "render"]

MAX_STARTUP_SCRIPT = 16384  # bytes; metadata values may hold 256 KB
OPS_AGENT_CONFIG = "/etc/google-cloud-ops-agent/config.yaml"  # under $BILLOW_ROOT
_OPS_AGENT_REPO = "https://dl.google.com/cloudagents/add-google-cloud-ops-agent-repo.sh"


def render(environment: Mapping[str, str], settings: GceSettings) -> str:
    """The startup script: the four ``BOOTSTRAP_ENV`` variables of ``environment`` and
    nothing else secret.

    Raises
    ------
    ValueError
        If one of ``BOOTSTRAP_ENV`` is missing or empty, or the script would reach
        ``MAX_STARTUP_SCRIPT`` bytes.
    """
    check_environment(environment)
    config_dir = OPS_AGENT_CONFIG.rsplit("/", 1)[0]
    log_setup = [
        f'if [ -z "$R" ] && [ ! -d {config_dir} ] && command -v curl >/dev/null; then',
        f"  curl -sSfo /tmp/ops-agent.sh {_OPS_AGENT_REPO} &&"
        " bash /tmp/ops-agent.sh --also-install || true",
        "fi",
        f'mkdir -p "$R{config_dir}"',
        f"cat >\"$R{OPS_AGENT_CONFIG}\" <<'BILLOW_LOGS'",
        _ops_agent_config(environment, settings.log_name, settings.deployment),
        "BILLOW_LOGS",
        'if [ -z "$R" ]; then systemctl restart google-cloud-ops-agent || true; fi',
        f'echo "{STARTED}"  # GceProvider.describe finds deleted instances by this line',
    ]
    return bootstrap_script(
        environment,
        scheduler_port=settings.scheduler_port,
        dashboard_port=settings.dashboard_port,
        log_setup=log_setup,
        shutdown="${BILLOW_SHUTDOWN:-shutdown -h now}  # stops the instance; Billow deletes it",
        max_bytes=MAX_STARTUP_SCRIPT,
    )


def _ops_agent_config(environment: Mapping[str, str], log_name: str, deployment: str) -> str:
    """Ops Agent configuration: ``AGENT_LOG`` to the log ``log_name``, each entry labelled
    with the deployment, cluster id and role (label-safe: a GCE name, an id and an
    ``InstanceRole``), so that one deployment never reads another's instances from it."""
    cluster = label_value(billow_tags.CLUSTER, environment["BILLOW_CLUSTER_ID"])
    role = label_value(billow_tags.ROLE, environment["BILLOW_ROLE"])
    deployment = label_value(billow_tags.DEPLOYMENT, deployment)
    return "\n".join(
        [
            "logging:",
            "  receivers:",
            f"    {log_name}:",
            "      type: files",
            f"      include_paths: [{AGENT_LOG}]",
            "  processors:",
            "    billow_labels:",
            "      type: modify_fields",
            "      fields:",
            '        labels."billow-deployment":',
            f"          static_value: {deployment}",
            '        labels."billow-cluster-id":',
            f"          static_value: {cluster}",
            '        labels."billow-role":',
            f"          static_value: {role}",
            "  service:",
            "    pipelines:",
            "      billow:",
            f"        receivers: [{log_name}]",
            "        processors: [billow_labels]",
        ]
    )
