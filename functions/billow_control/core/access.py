"""Who may do what: the one place every use case asks before it reads or writes.

Three things decide, in this order:

1. the token's scope (``read-only``: reads; ``clusters``: clusters and software, never
   tokens, users, teams or limits; none: whatever the role allows);
2. the user's role in their team (``viewer`` reads; ``member`` also creates and runs
   clusters; team ``admin`` also stops the team's clusters and manages its users) or
   ``is_admin``, the deployment's administrators, who may do everything;
3. for one cluster, whether the caller may see it at all: its owner, the owner's team
   admins and viewers, and deployment admins. A cluster the caller may not see is a 404
   identical to a missing one; one it may see but not change is a 403.

A refusal raises ``Forbidden`` (403) or ``NotFound`` (404); nothing is written before.
"""

from __future__ import annotations

from enum import StrEnum

from .accounts import Caller, Role, TokenScope, User
from .errors import Forbidden, NotFound
from .models import ClusterRecord


class Action(StrEnum):
    whoami = "whoami"  # read one's own identity and usage
    list_tokens = "list-tokens"
    manage_tokens = "manage-tokens"  # create and revoke one's own tokens
    read_clusters = "read-clusters"  # list, get, logs
    create_cluster = "create-cluster"
    scale_cluster = "scale-cluster"
    stop_cluster = "stop-cluster"
    connect_cluster = "connect-cluster"  # the client's TLS bundle: owners only
    read_software = "read-software"
    write_software = "write-software"  # uploads, create and delete environments
    manage_users = "manage-users"  # add, disable, list (team admins: their team)
    manage_teams = "manage-teams"  # deployment admins
    set_limits = "set-limits"  # deployment admins


READS = frozenset({Action.whoami, Action.list_tokens, Action.read_clusters, Action.read_software})
CLUSTER_WORK = frozenset(
    {
        Action.create_cluster,
        Action.scale_cluster,
        Action.stop_cluster,
        Action.connect_cluster,
        Action.write_software,
    }
)
SCOPES: dict[TokenScope | None, frozenset[Action]] = {
    TokenScope.read_only: READS,
    TokenScope.clusters: READS | CLUSTER_WORK,
    None: frozenset(Action),
}
ROLES: dict[Role, frozenset[Action]] = {
    Role.viewer: READS | {Action.manage_tokens},
    Role.member: READS | CLUSTER_WORK | {Action.manage_tokens},
    Role.admin: READS | CLUSTER_WORK | {Action.manage_tokens, Action.manage_users},
}


def scope_of(user: User) -> TokenScope | None:
    return user.token.scope if isinstance(user, Caller) and user.token else None


def allowed(user: User, action: Action) -> bool:
    """Whether the token's scope and the user's role (or ``is_admin``) allow ``action``."""
    if action not in SCOPES[scope_of(user)]:
        return False
    return user.is_admin or action in ROLES[user.role]


def require(user: User, action: Action) -> None:
    """Raise ``Forbidden`` naming what stood in the way unless ``action`` is allowed."""
    scope = scope_of(user)
    if action not in SCOPES[scope]:
        raise Forbidden(f"a {scope.value if scope else ''} token cannot {_verb(action)}")
    if not allowed(user, action):
        who = f"a {user.role.value} of team {user.team!r}"
        raise Forbidden(f"{who} cannot {_verb(action)}; ask a team admin")


def _verb(action: Action) -> str:
    return action.value.replace("-", " ")


def sees_cluster(user: User, record: ClusterRecord) -> bool:
    """Owners, deployment admins, and the admins and viewers of the cluster's team."""
    if user.is_admin or record.owner == user.id:
        return True
    return record.team == user.team and user.role in (Role.admin, Role.viewer)


def cluster(
    user: User, action: Action, record: ClusterRecord | None, cluster_id: str
) -> ClusterRecord:
    """The record, if ``user`` may do ``action`` to it.

    Raises ``NotFound`` (the same as for a missing id) when the user may not see it, or
    when ``action`` is ``connect-cluster`` and they do not own it; ``Forbidden`` when
    they may see it but not change it. Scale is for the owner and deployment admins;
    stop also for the team's admins.
    """
    require(user, action)
    own = record is not None and record.owner == user.id
    if (
        record is None
        or not sees_cluster(user, record)
        or (action == Action.connect_cluster and not own)
    ):
        raise NotFound(f"no cluster {cluster_id!r}", field="cluster_id")
    if action in READS or own or user.is_admin:
        return record
    if action == Action.stop_cluster and user.role == Role.admin:
        return record
    raise Forbidden(
        f"only the owner or an admin can {_verb(action).replace(' cluster', '')} this cluster"
    )


def listing(user: User) -> tuple[str | None, str | None]:
    """``(owner, team)`` filters of the clusters ``user`` may list: every cluster for a
    deployment admin, the team's for team admins and viewers, else the user's own."""
    if user.is_admin:
        return None, None
    if user.role in (Role.admin, Role.viewer):
        return None, user.team
    return user.id, None


def stop_reason(user: User, record: ClusterRecord) -> str:
    """``user`` when the owner stops a cluster, ``admin:<name>`` when an admin does."""
    return "user" if record.owner == user.id else f"admin:{user.name}"


def manages(admin: User, target: User) -> bool:
    """Whether ``admin`` may see and change the account ``target`` (users of other teams
    are not found): deployment admins manage everyone, team admins their team's
    non-admin-deployment users."""
    if admin.is_admin:
        return True
    return admin.role == Role.admin and target.team == admin.team and not target.is_admin


def usage_scope(user: User, team: str | None) -> tuple[str | None, str | None]:
    """``(owner, team)`` filters of the usage ``user`` may read, asked for ``team``.

    Deployment admins read every team (or the one asked); team admins and viewers their
    team's; members only their own. Another team is ``NotFound`` (as a missing one); a
    member asking for their team's is ``Forbidden``.
    """
    if user.is_admin:
        return None, team
    if team is not None and team != user.team:
        raise NotFound(f"no team {team!r}", field="team")
    if user.role in (Role.admin, Role.viewer):
        return None, user.team
    if team is not None:
        raise Forbidden(
            f"a member of team {user.team!r} sees only their own usage; ask a team admin"
        )
    return user.id, None
