"""The ``billow:*`` tags every cloud resource carries, in one place.

The reaper diffs tagged resources against the store, so a crash between "resource
created" and "record written" leaks nothing. Providers add the per-instance tags
(``INSTANCE_NAME``, ``ROLE``) to instances; everything else carries ``cluster_tags``.
"""

from __future__ import annotations

from collections.abc import Mapping

PREFIX = "billow:"
CLUSTER = "billow:cluster-id"
DEPLOYMENT = "billow:deployment"
OWNER = "billow:owner"
INSTANCE_NAME = "billow:instance-name"
ROLE = "billow:role"
NETWORK = "billow:network"  # a deployment's shared network pieces: "vpc", "subnet", "igw"
# A warm-pool instance (EC2): ``<type>/<arch>/<image>``; never with CLUSTER or OWNER.
POOL = "billow:pool"


def cluster_tags(
    cluster_id: str, owner: str, deployment: str, user_tags: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The tags of every resource of one cluster: the user's own, then Billow's, which
    win (``ClusterRequest`` already refuses user tags with the reserved prefix)."""
    return {
        **(user_tags or {}),
        CLUSTER: cluster_id,
        DEPLOYMENT: deployment,
        OWNER: owner,
    }


def is_reserved(key: str) -> bool:
    """Whether a tag key belongs to Billow (users may not set it)."""
    return key.startswith(PREFIX)
