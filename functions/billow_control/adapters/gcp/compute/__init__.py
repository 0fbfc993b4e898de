"""Compute Engine adapter: runs each Billow instance as one VM started by ``bulkInsert``.

Modules, one job each:

* ``settings``: ``GceSettings`` (what a deployment configures);
* ``labels``: Billow's tags as GCE labels, label filters, and back;
* ``startup_script``: the bootstrap script (control-plane URL and one-time token only),
  shared with EC2 through ``adapters/instance_bootstrap.py``;
* ``machine_types``: the zone's machine types (cached) and the cpu/memory/GPU choice;
* ``network``: the deployment's firewall rule and one rule per cluster;
* ``instances``: reading Billow's instances back as ``InstanceInfo``;
* ``launcher``: per-cluster instance templates and bulkInsert (spot, standard, fallback);
* ``logs``: instance logs read back from Cloud Logging;
* ``provider``: ``GceProvider``, the ``core.ports.Provider`` built from the above.

``compute_provider_from_env(settings)`` builds it from the environment:

================================  ============================================================
variable                          meaning
================================  ============================================================
``BILLOW_GCP_PROJECT``            project of the instances (required)
``BILLOW_GCP_ZONE``               zone of the instances, e.g. ``us-central1-a`` (required)
``BILLOW_DEPLOYMENT``             deployment name, the ``billow-deployment`` label; lower-case
                                  letters, digits and ``-`` (via ``ControlSettings``)
``BILLOW_CONTROL_URL``            URL instances bootstrap from (via ``ControlSettings``; the
                                  lifecycle puts it in each instance's startup script)
``BILLOW_GCP_IMAGE``              boot image (default the ``debian-12`` family)
``BILLOW_GCP_MACHINE_FAMILIES``   comma-separated families to choose machine types from, in
                                  order of preference (default ``e2,n2,n2d``)
``BILLOW_PURCHASE``               ``spot_with_fallback`` (default), ``spot`` or ``standard``
                                  (``on-demand`` is read as ``standard``)
``BILLOW_GCP_WORKER_GPU``         accelerator of each worker, ``<type>:<count>``, e.g.
                                  ``nvidia-tesla-t4:1`` (default none)
``BILLOW_GCP_NETWORK``            VPC network (default ``global/networks/default``)
``BILLOW_GCP_SUBNETWORK``         subnetwork (default: the network's own in the region)
``BILLOW_ALLOWED_CIDR``           who may reach schedulers and dashboards (default
                                  ``0.0.0.0/0``: mutual TLS is the access control there)
``BILLOW_GCP_DISK_GB``            boot disk size (default 50)
``BILLOW_GCP_SERVICE_ACCOUNT``    service account of instances (it needs
                                  ``roles/logging.logWriter``); default: none
``BILLOW_GCP_LOG_NAME``           Cloud Logging log of the agents (default ``billow-agent``)
``BILLOW_GCP_COMPUTE_ENDPOINT``   Compute Engine API endpoint (tests: a loopback fake)
``BILLOW_GCP_LOGGING_ENDPOINT``   Cloud Logging API endpoint (tests: a loopback fake)
================================  ============================================================

With an endpoint starting ``http://`` the clients use anonymous credentials (a loopback
fake); otherwise Application Default Credentials. Every client uses the REST transport.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ....core.ports import Provider
from ....core.settings import ControlSettings
from ..clients import client_options
from .instances import instance_name
from .labels import label_filter, labels_of_tags, tags_of_labels
from .launcher import CAPACITY_ERRORS, GceLaunchError, request_id, template_name
from .machine_types import MachineType, MachineTypeError, choose
from .provider import GceProvider
from .settings import GceSettings
from .startup_script import render as render_startup_script

__all__ = [
    "CAPACITY_ERRORS",
    "GceLaunchError",
    "GceProvider",
    "GceSettings",
    "MachineType",
    "MachineTypeError",
    "choose",
    "compute_provider_from_env",
    "gce_settings_from_env",
    "instance_name",
    "label_filter",
    "labels_of_tags",
    "render_startup_script",
    "request_id",
    "tags_of_labels",
    "template_name",
]

VARIABLES = {
    "project": "BILLOW_GCP_PROJECT",
    "zone": "BILLOW_GCP_ZONE",
    "deployment": "BILLOW_DEPLOYMENT",
    "image": "BILLOW_GCP_IMAGE",
    "machine_families": "BILLOW_GCP_MACHINE_FAMILIES",
    "purchase": "BILLOW_PURCHASE",
    "worker_gpu": "BILLOW_GCP_WORKER_GPU",
    "network": "BILLOW_GCP_NETWORK",
    "subnetwork": "BILLOW_GCP_SUBNETWORK",
    "allowed_cidr": "BILLOW_ALLOWED_CIDR",
    "disk_gb": "BILLOW_GCP_DISK_GB",
    "service_account": "BILLOW_GCP_SERVICE_ACCOUNT",
    "log_name": "BILLOW_GCP_LOG_NAME",
}


class GceConfigError(ValueError):
    """A Compute Engine variable is missing or invalid (the message names it)."""


def gce_settings_from_env(settings: ControlSettings, env: Mapping[str, str]) -> GceSettings:
    """``GceSettings`` from the variables above; raises ``GceConfigError`` naming the
    first missing or invalid variable and what it accepts."""
    values: dict[str, Any] = {"deployment": settings.deployment}
    for field, variable in VARIABLES.items():
        value = env.get(variable, "").strip()
        if field == "deployment" or not value:
            continue
        if field == "machine_families":
            values[field] = [v.strip() for v in value.split(",") if v.strip()]
        elif field == "purchase":
            values[field] = "standard" if value == "on-demand" else value
        else:
            values[field] = value
    for required in ("project", "zone"):
        if required not in values:
            raise GceConfigError(f"environment variable {VARIABLES[required]} is required")
    try:
        return GceSettings.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else ""
        raise GceConfigError(f"{VARIABLES.get(field, field)}: {first['msg']}") from None


def compute_provider_from_env(
    settings: ControlSettings, env: Mapping[str, str] | None = None
) -> Provider:
    """The ``GceProvider`` of this deployment, configured by the variables above (``env``
    defaults to ``os.environ``). Makes no Google call. Raises ``GceConfigError``."""
    from google.cloud import compute_v1
    from google.cloud import logging as cloud_logging

    env = os.environ if env is None else env
    gce = gce_settings_from_env(settings, env)
    kwargs, options = client_options(env.get("BILLOW_GCP_COMPUTE_ENDPOINT"))

    def compute(cls: Any) -> Any:
        return cls(transport="rest", client_options=options or None, **kwargs)

    log_kwargs, log_options = client_options(env.get("BILLOW_GCP_LOGGING_ENDPOINT"))
    logging_client = cloud_logging.Client(
        project=gce.project,
        client_options=log_options or None,
        _use_grpc=False,
        **log_kwargs,
    )
    return GceProvider(
        instances=compute(compute_v1.InstancesClient),
        templates=compute(compute_v1.InstanceTemplatesClient),
        firewalls=compute(compute_v1.FirewallsClient),
        machine_types=compute(compute_v1.MachineTypesClient),
        logging=logging_client,
        settings=gce,
    )
