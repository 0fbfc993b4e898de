"""Who may reach a cluster's scheduler and dashboard: ``ClusterRequest.allow_ingress_from``.

A request lists CIDR blocks, or ``"me"``: the address the create request came from (API
Gateway's ``requestContext.http.sourceIp``, the embedded server's peer), resolved by the
API before the record is written, so the record holds CIDR blocks only. Nothing opens to
``0.0.0.0/0`` unless a request lists it.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from .errors import Invalid

if TYPE_CHECKING:
    from .models import ClusterRequest

ME = "me"
MAX_BLOCKS = 20  # two rules each (scheduler, dashboard) in a security group of 60


def check_list(values: list[str]) -> list[str]:
    """Normalised CIDR blocks (and ``"me"``), duplicates dropped. Raises ``ValueError``
    naming the first entry that is neither, or a list of the wrong length."""
    if not 1 <= len(values) <= MAX_BLOCKS:
        raise ValueError(f"must list 1 to {MAX_BLOCKS} CIDR blocks (or 'me')")
    out = []
    for value in values:
        if value == ME:
            out.append(value)
            continue
        try:
            out.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise ValueError(
                f"{value[:60]!r} is neither a CIDR block such as '203.0.113.0/24' nor 'me'"
            ) from None
    return list(dict.fromkeys(out))


def with_requester(request: ClusterRequest, source_ip: str | None) -> ClusterRequest:
    """``request`` with each ``"me"`` replaced by ``source_ip`` as a /32 (/128). Raises
    ``Invalid`` naming ``allow_ingress_from`` when ``"me"`` is asked and the source is not
    an IP address."""
    wanted = request.allow_ingress_from
    listed = [wanted] if isinstance(wanted, str) else list(wanted)
    if ME not in listed:
        return request
    try:
        me = str(ipaddress.ip_network(str(source_ip)))
    except ValueError:
        raise Invalid(
            "allow_ingress_from: 'me' needs the address this request came from, which the "
            "control plane did not see; give CIDR blocks such as '203.0.113.7/32'",
            field="allow_ingress_from",
        ) from None
    resolved = list(dict.fromkeys(me if item == ME else item for item in listed))
    return request.model_copy(update={"allow_ingress_from": resolved})


def cidrs(request: ClusterRequest) -> list[str]:
    """The CIDR blocks of a stored request; an unresolved ``"me"`` (a record written
    before the API resolved it) counts for nothing."""
    wanted = request.allow_ingress_from
    return [] if isinstance(wanted, str) else [c for c in wanted if c != ME]
