"""The one place that writes EC2 tags and tag filters.

Everything Billow creates is found again by its tags: ``tag_filters`` builds the
``Filters`` of every look-up, ``tag_specs`` tags resources in their create call (so a
crash never leaves an untagged resource), and ``tags_of`` reads them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ....core import tags as billow_tags


def tag_filters(
    deployment: str,
    cluster_id: str | None = None,
    *,
    tags: Mapping[str, str] | None = None,
    **attributes: Iterable[str],
) -> list[dict[str, Any]]:
    """EC2 ``Filters`` matching resources of ``deployment``.

    Parameters
    ----------
    deployment
        Value of the ``billow:deployment`` tag; always part of the filter, so a look-up
        never reaches another deployment's resources.
    cluster_id
        Also require this ``billow:cluster-id`` tag.
    tags
        Further exact tag values to require (``{tags.INSTANCE_NAME: "worker-0"}``).
    **attributes
        Non-tag filters, named with ``_`` for ``-`` (``instance_state_name=LIVE_STATES``
        filters on ``instance-state-name``); a resource matches any of the values.
    """
    wanted = {billow_tags.DEPLOYMENT: deployment}
    if cluster_id is not None:
        wanted[billow_tags.CLUSTER] = cluster_id
    wanted |= tags or {}
    filters = [{"Name": f"tag:{key}", "Values": [value]} for key, value in wanted.items()]
    filters += [
        {"Name": name.replace("_", "-"), "Values": list(values)}
        for name, values in attributes.items()
    ]
    return filters


def cluster_tags(deployment: str, cluster_id: str, tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` (the cluster's, from the spec) with the cluster and deployment tags set to
    this cluster and deployment, whatever ``tags`` said."""
    return {**tags, billow_tags.CLUSTER: cluster_id, billow_tags.DEPLOYMENT: deployment}


def network_tags(deployment: str, kind: str) -> dict[str, str]:
    """Tags of a deployment's shared network piece ``kind`` (``"vpc"``, ``"subnet"``,
    ``"igw"``)."""
    return {
        billow_tags.DEPLOYMENT: deployment,
        billow_tags.NETWORK: kind,
        "Name": f"billow-{deployment}",
    }


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """``tags`` as EC2's ``[{"Key": ..., "Value": ...}]``."""
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tag_specs(tags: Mapping[str, str], *resource_types: str) -> list[dict[str, Any]]:
    """``TagSpecifications`` giving ``tags`` to each of ``resource_types`` at creation."""
    return [{"ResourceType": r, "Tags": tag_list(tags)} for r in resource_types]


def tags_of(resource: Mapping[str, Any]) -> dict[str, str]:
    """The tags of an EC2 resource description as a dict (``{}`` when it has none)."""
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}
