"""The one place that maps Billow's tags (``core/tags.py``) to Compute Engine labels,
builds label filters, and reads labels back.

GCE labels: keys of 1 to 63 characters starting with a lower-case letter, values of at
most 63; both only lower-case letters, digits, ``_`` and ``-``; at most 64 per resource.
Billow's own tags map exactly (``billow:cluster-id`` → ``billow-cluster-id``) and their
values must already be valid label values (ids are ``c-<hex>``/``u-<hex>``, the deployment
is validated by ``GceSettings``), so they read back unchanged. A user's tags are
folded to the rules (lower case, other characters as ``_``, cut to 63): lossy, but a
label is never refused because of a user's tag.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ....core import tags as billow_tags

MAX_LABELS = 64
_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_INVALID = re.compile(r"[^a-z0-9_-]")

# Billow's tags and their labels, in both directions.
BILLOW_LABELS = {
    tag: tag.replace(":", "-")
    for tag in (
        billow_tags.CLUSTER,
        billow_tags.DEPLOYMENT,
        billow_tags.OWNER,
        billow_tags.INSTANCE_NAME,
        billow_tags.ROLE,
    )
}
TAGS_OF_LABELS = {label: tag for tag, label in BILLOW_LABELS.items()}


def label_key(tag: str) -> str:
    """The label key of tag ``tag``: Billow's exactly, a user's folded to the rules."""
    if tag in BILLOW_LABELS:
        return BILLOW_LABELS[tag]
    key = _INVALID.sub("_", tag.lower())[:63]
    return key if key[:1].isalpha() else f"t{key}"[:63]


def label_value(tag: str, value: str) -> str:
    """The label value for ``value`` of ``tag``.

    Raises ``ValueError`` when a Billow tag's value is not a valid label value (it would
    not read back unchanged); a user's value is folded to the rules.
    """
    if tag in BILLOW_LABELS:
        if not _VALUE.match(value):
            raise ValueError(
                f"{tag}={value!r} is not a Compute Engine label value "
                "(lower-case letters, digits, '_' and '-', at most 63)"
            )
        return value
    return _INVALID.sub("_", value.lower())[:63]


def labels_of_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` as labels; Billow's tags win over a user's tag that folds to their key.

    Raises ``ValueError`` for an invalid Billow value, or when the user's tags would
    exceed ``MAX_LABELS`` labels.
    """
    mine = {label_key(k): label_value(k, v) for k, v in tags.items() if k in BILLOW_LABELS}
    theirs = {label_key(k): label_value(k, v) for k, v in tags.items() if k not in BILLOW_LABELS}
    labels = {**{k: v for k, v in theirs.items() if k not in mine}, **mine}
    if len(labels) > MAX_LABELS:
        raise ValueError(f"tags: at most {MAX_LABELS - len(mine)} tags fit Compute Engine labels")
    return labels


def tags_of_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels read back as tags: Billow's labels under their tag names, others as they are."""
    return {TAGS_OF_LABELS.get(k, k): v for k, v in labels.items()}


def label_filter(deployment: str, cluster_id: str | None = None, **tags: str) -> str:
    """A ``list`` filter matching resources labelled with ``deployment`` (always: a
    look-up never reaches another deployment), ``cluster_id`` and further Billow ``tags``
    given by label key (``{"billow-instance-name": "worker-0"}``)."""
    wanted = {BILLOW_LABELS[billow_tags.DEPLOYMENT]: deployment}
    if cluster_id is not None:
        wanted[BILLOW_LABELS[billow_tags.CLUSTER]] = cluster_id
    wanted |= tags
    return " AND ".join(f'(labels.{k} = "{v}")' for k, v in wanted.items())


def is_label_key(key: str) -> bool:
    return bool(_KEY.match(key))
