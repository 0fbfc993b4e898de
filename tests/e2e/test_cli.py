"""The `billow` command against a running embedded server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.processes import EmbeddedServer, wait_until

pytestmark = [pytest.mark.e2e]


def billow_cli(
    *args: str, login_file: Path, stdin: str | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "BILLOW_LOGIN_FILE": str(login_file), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "billow.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=60,
    )


def test_login_list_status_logs_and_stop(
    embedded_server: EmbeddedServer, api: httpx.Client, tmp_path: Path
) -> None:
    login_file = tmp_path / "login.yaml"
    bad = billow_cli(
        "login", "--server", embedded_server.url, "--token", "bw_nope", login_file=login_file
    )
    assert bad.returncode == 1 and "invalid API token" in bad.stdout
    assert not login_file.exists()

    ok = billow_cli(
        "login",
        "--server",
        embedded_server.url,
        login_file=login_file,
        stdin=embedded_server.token + "\n",
    )
    assert ok.returncode == 0 and "logged in" in ok.stdout, ok.stdout + ok.stderr
    assert oct(login_file.stat().st_mode & 0o777) == "0o600"
    assert yaml.safe_load(login_file.read_text())["billow"]["server"] == embedded_server.url

    cluster = api.post("/v1/clusters", json={"n_workers": 0, "name": "cli-made"}).json()
    url = f"/v1/clusters/{cluster['id']}"
    wait_until(lambda: api.get(url).json()["status"] == "ready", 60, "cli-made ready")

    listed = billow_cli("cluster", "list", login_file=login_file)
    assert "cli-made" in listed.stdout and "ready" in listed.stdout
    status = billow_cli("cluster", "status", "cli-made", login_file=login_file)
    assert f"id: {cluster['id']}" in status.stdout and "status: ready" in status.stdout
    logs = billow_cli("cluster", "logs", cluster["id"], "--lines", "50", login_file=login_file)
    assert "scheduler" in logs.stdout and "Scheduler at" in logs.stdout

    stopped = billow_cli("cluster", "stop", "cli-made", login_file=login_file)
    assert stopped.returncode == 0 and "stopping cli-made" in stopped.stdout
    wait_until(lambda: api.get(url).json()["status"] == "stopped", 60, "cli-made stopped")
    missing = billow_cli("cluster", "status", "never-existed", login_file=login_file)
    assert missing.returncode == 1 and "no cluster named 'never-existed'" in missing.stdout


def test_server_refuses_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    """The embedded server reads its settings through the same builder as Lambda: a bad
    duration names the dask config key and stops it before anything starts."""
    env = {**os.environ, "BILLOW_IDLE_TIMEOUT": "soon", "COLUMNS": "200"}
    data_dir = tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "billow.cli", "server", "--port", "0", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2, proc
    assert "billow.idle-timeout" in proc.stdout and "'soon' is not a duration" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not data_dir.exists()  # nothing was created


def test_team_admin_adds_users_and_rotates_tokens(
    embedded_server: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A team admin's day through the CLI: add a team and a user, log in as them, rotate
    their token, disable them; every refusal is one line. In process (typer's runner:
    the same code as ``billow``, without an interpreter start per command)."""
    import dask.config
    from typer.testing import CliRunner

    from billow import cli

    admin_login = tmp_path / "admin.yaml"
    user_login = tmp_path / "user.yaml"
    team = f"t-{uuid.uuid4().hex[:6]}"
    name = f"u-{uuid.uuid4().hex[:6]}"
    monkeypatch.setattr(cli.console, "_width", 200)
    runner = CliRunner()

    def run(*args: str, login: Path = admin_login, stdin: str | None = None) -> str:
        with dask.config.set({"billow.login-file": str(login)}):
            done = runner.invoke(cli.app, list(args), input=stdin)
        assert done.exception is None or isinstance(done.exception, SystemExit), done.output
        return f"{done.exit_code}:{done.output}"

    def token_of(output: str) -> str:
        return next(w for w in output.split() if w.startswith("bw_"))

    assert (
        run("login", "--server", embedded_server.url, stdin=embedded_server.token + "\n")[0] == "0"
    )
    assert run("admin", "team", "add", team).startswith("0:added team")
    added = run("admin", "user", "add", name, "--team", team, "--role", "member")
    assert added.startswith("0:") and f"member of {team}" in added
    first = token_of(added)

    login = run("login", "--server", embedded_server.url, login=user_login, stdin=first + "\n")
    assert f"as {name} (member, team {team})" in login and "expires 20" in login
    # rotate: a new token, log in with it, revoke the first
    made = run("token", "create", "--name", "laptop", login=user_login)
    assert made.startswith("0:") and "laptop" in made
    second = token_of(made)
    run("login", "--server", embedded_server.url, login=user_login, stdin=second + "\n")
    listed = run("token", "list", login=user_login)
    ids = [w for w in listed.split() if w.startswith("t-")]
    assert len(ids) == 2 and "laptop" in listed
    first_id = ids[0]
    assert run("token", "revoke", first_id, login=user_login).startswith("0:revoked")
    with httpx.Client(base_url=embedded_server.url) as http:
        headers = {"Authorization": f"Bearer {first}"}
        assert http.get("/v1/whoami", headers=headers).status_code == 401
    # limits: an admin raises them, the user sees use against them
    raised = run("admin", "limits", "user", name, "--cores", "128", "--cpu-hours", "500")
    assert raised.startswith("0:") and "cores 128, cpu-hours 500" in raised
    usage = run("usage", login=user_login)
    assert usage.startswith("0:") and "0 / 128" in usage and "0 / 500" in usage
    rows = run("usage", "--csv", login=user_login)
    assert rows.startswith("0:month,group,name,cpu_hours,gpu_hours,"), rows
    bad = run("usage", "--month", "2026-13", login=user_login)
    assert bad.startswith("1:") and "month" in bad and "Traceback" not in bad, bad
    month = rows.split("\n")[1].split(",")[0]
    member_bill = run("invoice", month, login=user_login)
    assert member_bill.startswith("1:") and "invoices are for team admins" in member_bill
    bills = run("invoice", month)  # the deployment admin: every team with usage
    assert bills.startswith("0:") and ("invoice preview" in bills or "no usage" in bills)
    # a member is no admin: one line, exit 1
    refused = run("admin", "team", "add", "nope", login=user_login)
    assert refused.startswith("1:") and "cannot manage teams" in refused
    assert run("admin", "user", "disable", name).startswith("0:disabled")
    gone = run("token", "list", login=user_login)
    assert gone.startswith("1:") and "invalid API token" in gone  # revoked with the user
