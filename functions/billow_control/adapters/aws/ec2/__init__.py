"""EC2 adapter: runs each Billow instance as a one-instance EC2 instant fleet.

Modules, one job each:

* ``settings``: ``EC2Settings`` (what a deployment configures) and ``Network``;
* ``user_data``: the bootstrap script (control-plane URL and one-time token only);
* ``tagging``: every EC2 tag, tag specification and tag filter Billow writes;
* ``instances``: reading Billow's instances back as ``InstanceInfo``;
* ``network``: the deployment's VPC, subnets and route, one security group per cluster;
* ``fleet``: launch templates and instant fleets (spot, on-demand, fallback);
* ``pool``, ``pool_user_data``: the warm pool of stopped instances (off unless
  ``warm_pool_size`` is set; claims in ``adapters/aws/pool_claims.py``);
* ``provider``: ``EC2Provider``, the ``core.ports.Provider`` built from the above.
"""

from __future__ import annotations

from .fleet import (
    CAPACITY_ERRORS,
    EC2LaunchError,
    FleetLauncher,
    idempotency_token,
    launch_template_name,
)
from .instances import LIVE_STATES
from .machines import AmiResolver, EC2MachineCatalog
from .network import DeploymentNetwork
from .provider import EC2Provider
from .settings import EC2Settings, Network
from .tagging import tag_filters
from .user_data import AGENT_LOG, BOOTSTRAP_ENV, MAX_USER_DATA, render_user_data

__all__ = [
    "AGENT_LOG",
    "BOOTSTRAP_ENV",
    "CAPACITY_ERRORS",
    "LIVE_STATES",
    "AmiResolver",
    "EC2MachineCatalog",
    "MAX_USER_DATA",
    "DeploymentNetwork",
    "EC2LaunchError",
    "EC2Provider",
    "EC2Settings",
    "FleetLauncher",
    "Network",
    "idempotency_token",
    "launch_template_name",
    "render_user_data",
    "tag_filters",
]
