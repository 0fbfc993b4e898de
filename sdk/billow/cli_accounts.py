"""``billow token ...`` (your API tokens) and ``billow admin user|team ...`` (people).

Every failure the API answers is one line (``cli._run``), never a traceback.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from .api import ControlPlaneClient

token_app = typer.Typer(help="Your API tokens: create, list, revoke.", no_args_is_help=True)
admin_app = typer.Typer(help="Administer the deployment (admins).", no_args_is_help=True)
user_app = typer.Typer(help="Users: add, disable, enable, list, new token.", no_args_is_help=True)
team_app = typer.Typer(help="Teams: add, list, members.", no_args_is_help=True)
admin_app.add_typer(user_app, name="user")
admin_app.add_typer(team_app, name="team")


def _call(method: str, path: str, **kwargs: Any) -> Any:
    from .cli import _run  # the CLI's one place that turns failures into one line

    async def go() -> Any:
        async with ControlPlaneClient() as api:
            return await api.request(method, path, **kwargs)

    return _run(go())


def _print(text: str) -> None:
    from .cli import console

    console.print(text, highlight=False)


def _when(value: str | None, never: str = "never") -> str:
    return value[:16].replace("T", " ") + " UTC" if value else never


def _show_new_token(made: dict[str, Any]) -> None:
    _print(
        f"token [bold]{made['id']}[/bold] ({escape(made.get('name') or '-')}), scope "
        f"{made.get('scope') or 'full'}, expires {_when(made.get('expires_at'))}:"
    )
    from .cli import console

    console.print(made["token"], markup=False, highlight=False, soft_wrap=True)
    _print("[dim]shown once: store it now (billow login --token ...)[/dim]")


# -- billow token ------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    name: str = typer.Option("", "--name", help="A label to recognise the token by."),
    scope: str = typer.Option(
        None, "--scope", help="read-only or clusters (default: all your role allows)."
    ),
    lifetime: str = typer.Option(
        None, "--lifetime", help="e.g. 30d; at most the deployment's (90 days by default)."
    ),
) -> None:
    """Create an API token of yours (shown once)."""
    body: dict[str, Any] = {"name": name}
    if scope:
        body["scope"] = scope
    if lifetime:
        body["lifetime"] = lifetime
    _show_new_token(_call("POST", "/v1/tokens", json=body))


@token_app.command("list")
def token_list() -> None:
    """List your API tokens: id, name, scope, expiry, last use."""
    table = Table("id", "name", "scope", "created", "expires", "last used")
    for t in _call("GET", "/v1/tokens")["tokens"]:
        table.add_row(
            t["id"],
            escape(t.get("name") or ""),
            t.get("scope") or "full",
            _when(t.get("created_at"), "-"),
            _when(t.get("expires_at")),
            _when(t.get("last_used_at"), "-"),
        )
    from .cli import console

    console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str = typer.Argument(..., help="The token's id (t-...).")) -> None:
    """Revoke one of your tokens: it stops working at once."""
    _call("DELETE", f"/v1/tokens/{token_id}")
    _print(f"revoked {escape(token_id)}")


# -- billow admin user -------------------------------------------------------------------


@user_app.command("add")
def user_add(
    name: str = typer.Argument(..., help="User name (letters, digits, . _ -)."),
    team: str = typer.Option(None, "--team", help="An existing team (default: yours)."),
    role: str = typer.Option("member", "--role", help="admin, member or viewer."),
) -> None:
    """Add a user to a team; prints their first token (shown once)."""
    body: dict[str, Any] = {"name": name, "role": role}
    if team:
        body["team"] = team
    user = _call("POST", "/v1/admin/users", json=body)
    _print(f"added [bold]{escape(user['name'])}[/bold] ({user['role']} of {user['team']})")
    from .cli import console

    console.print(user["token"], markup=False, highlight=False, soft_wrap=True)
    _print("[dim]shown once: give it to them (billow login --token ...)[/dim]")


@user_app.command("disable")
def user_disable(name: str = typer.Argument(..., help="User name.")) -> None:
    """Disable a user: every token of theirs stops working at once."""
    _call("POST", f"/v1/admin/users/{name}/disable")
    _print(f"disabled {escape(name)}; their tokens are revoked")


@user_app.command("enable")
def user_enable(name: str = typer.Argument(..., help="User name.")) -> None:
    """Enable a disabled user (then give them a token: billow admin user token NAME)."""
    _call("POST", f"/v1/admin/users/{name}/enable")
    _print(f"enabled {escape(name)}")


@user_app.command("token")
def user_token(name: str = typer.Argument(..., help="User name.")) -> None:
    """Issue a new API token for a user you manage (shown once)."""
    _show_new_token(_call("POST", f"/v1/admin/users/{name}/tokens"))


def _users_table(users: list[dict[str, Any]]) -> Table:
    table = Table("name", "team", "role", "state")
    for u in users:
        state = "disabled" if u["disabled"] else "deployment admin" if u["is_admin"] else "active"
        table.add_row(escape(u["name"]), u["team"], u["role"], state)
    return table


@user_app.command("list")
def user_list(team: str = typer.Option(None, "--team", help="Only this team.")) -> None:
    """List the users you manage."""
    from .cli import console

    params = {"team": team} if team else None
    console.print(_users_table(_call("GET", "/v1/admin/users", params=params)["users"]))


# -- billow admin team -------------------------------------------------------------------


@team_app.command("add")
def team_add(name: str = typer.Argument(..., help="Team name (lower-case, digits, -).")) -> None:
    """Add a team (deployment admins)."""
    _call("POST", "/v1/admin/teams", json={"name": name})
    _print(f"added team [bold]{escape(name)}[/bold]")


@team_app.command("list")
def team_list() -> None:
    """List teams (deployment admins: all; team admins: theirs)."""
    for team in _call("GET", "/v1/admin/teams")["teams"]:
        _print(escape(team["name"]))


@team_app.command("members")
def team_members(name: str = typer.Argument(..., help="Team name.")) -> None:
    """List a team's users and their roles."""
    from .cli import console

    console.print(_users_table(_call("GET", f"/v1/admin/teams/{name}/members")["users"]))


def describe_login(who: dict[str, Any]) -> str:
    """What ``billow login`` prints: who you are, your team and role, the token's expiry."""
    token = who.get("token") or {}
    role = "deployment admin" if who.get("is_admin") else who.get("role", "member")
    scope = f", scope {token['scope']}" if token.get("scope") else ""
    return (
        f"as [bold]{escape(who['name'])}[/bold] ({role}, team {escape(who.get('team', '-'))})"
        f"; token {token.get('id', '?')}{scope} expires {_when(token.get('expires_at'))}"
    )


# -- quotas ------------------------------------------------------------------------------

limits_app = typer.Typer(help="Quota limits of users and teams (admins).", no_args_is_help=True)
admin_app.add_typer(limits_app, name="limits")
_LIMIT_NAMES = ("cores", "gpus", "instances", "clusters", "cpu_hours")


def _limits_body(
    cores: int | None,
    gpus: int | None,
    instances: int | None,
    clusters: int | None,
    cpu_hours: float | None,
) -> dict[str, Any]:
    values = (cores, gpus, instances, clusters, cpu_hours)
    return {k: v for k, v in zip(_LIMIT_NAMES, values, strict=True) if v is not None}


_CORES = typer.Option(None, "--cores", help="Concurrent cores.")
_GPUS = typer.Option(None, "--gpus", help="Concurrent GPUs.")
_INSTANCES = typer.Option(None, "--instances", help="Concurrent instances.")
_CLUSTERS = typer.Option(None, "--clusters", help="Concurrent clusters.")
_CPU_HOURS = typer.Option(None, "--cpu-hours", help="CPU-hours per calendar month (UTC).")


@limits_app.command("user")
def limits_user(
    name: str = typer.Argument(..., help="User name."),
    cores: int = _CORES,
    gpus: int = _GPUS,
    instances: int = _INSTANCES,
    clusters: int = _CLUSTERS,
    cpu_hours: float = _CPU_HOURS,
) -> None:
    """Set a user's limits (those not given return to the deployment's defaults)."""
    body = _limits_body(cores, gpus, instances, clusters, cpu_hours)
    user = _call("PUT", f"/v1/admin/users/{name}/limits", json=body)
    _print(f"limits of {escape(user['name'])}: {_limits_text(user['limits'])}")


@limits_app.command("team")
def limits_team(
    name: str = typer.Argument(..., help="Team name."),
    cores: int = _CORES,
    gpus: int = _GPUS,
    instances: int = _INSTANCES,
    clusters: int = _CLUSTERS,
    cpu_hours: float = _CPU_HOURS,
) -> None:
    """Set a team's limits (those not given: no team limit)."""
    body = _limits_body(cores, gpus, instances, clusters, cpu_hours)
    team = _call("PUT", f"/v1/admin/teams/{name}/limits", json=body)
    _print(f"limits of team {escape(team['name'])}: {_limits_text(team['limits'])}")


def _limits_text(limits: dict[str, Any]) -> str:
    shown = [f"{k.replace('_', '-')} {v:g}" for k, v in limits.items() if v is not None]
    return ", ".join(shown) or "defaults"
