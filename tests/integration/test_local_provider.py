"""The local-process provider against real processes (a stand-in "python" script)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from billow_control.adapters.clock import SystemClock
from billow_control.adapters.local.instance_setup import agent_pythonpath
from billow_control.adapters.local.process_provider import LocalProcessProvider
from billow_control.adapters.local.tenant_users import TenantAccounts, account_name
from billow_control.core.models import InstanceRole, InstanceSpec, InstanceState
from tests.support.processes import pid_alive, wait_until
from tests.support.tenants import remove_accounts

pytestmark = pytest.mark.integration

STUBBORN = """#!/bin/sh
# Stands in for `python -m billow.agent`: logs, then ignores SIGTERM if asked to.
echo "agent $BILLOW_INSTANCE_NAME starting role=$BILLOW_ROLE"
[ "$IGNORE_TERM" = 1 ] && trap '' TERM
[ -n "$FLOOD" ] && seq 1 "$FLOOD"
while true; do sleep 0.1; done
"""


@pytest.fixture
def provider(tmp_path: Path):
    script = tmp_path / "fake-python"
    script.write_text(STUBBORN)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    p = LocalProcessProvider(
        tmp_path / "instances", "test-deploy", SystemClock(), grace_period=0.5, python=str(script)
    )
    yield p
    p.kill_all()


def spec(name: str, **env: str) -> InstanceSpec:
    return InstanceSpec(
        cluster_id="c-1",
        name=name,
        role=InstanceRole.worker,
        cpu=1,
        memory="1 GiB",
        tags={
            "billow:cluster-id": "c-1",
            "billow:deployment": "test-deploy",
            "billow:owner": "u-1",
        },
        environment={"BILLOW_ROLE": "worker", **env},
    )


def pid_of(provider: LocalProcessProvider, instance_id: str) -> int:
    row = provider._db().execute("SELECT pid FROM instances WHERE id=?", (instance_id,)).fetchone()
    return int(row[0])


def test_launch_is_idempotent_and_tagged(provider: LocalProcessProvider) -> None:
    first = provider.launch(spec("worker-0"))
    again = provider.launch(spec("worker-0"))
    assert first.id == again.id
    [described] = provider.describe("c-1")
    assert described.state == InstanceState.running
    assert described.tags["billow:deployment"] == "test-deploy"
    pid = pid_of(provider, first.id)
    assert os.getpgid(pid) == pid  # its own process group, signalled as a whole
    wait_until(lambda: provider.tail_logs(first.id) != [], 10, "log line")
    assert provider.tail_logs(first.id) == ["agent worker-0 starting role=worker"]


def test_a_flooding_instance_keeps_only_the_newest_output(tmp_path: Path) -> None:
    """An instance that prints ~15 MB holds at most the limit on disk, in two files, and
    the newest lines read back whole and in order."""
    script = tmp_path / "fake-python"
    script.write_text(STUBBORN)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    limit = 1 << 20
    provider = LocalProcessProvider(
        tmp_path / "instances", "test-deploy", SystemClock(), python=str(script), log_limit=limit
    )
    try:
        info = provider.launch(spec("worker-0", FLOOD="2000000"))
        wait_until(lambda: provider.tail_logs(info.id, 1) == ["2000000"], 60, "flood written")
        log = provider.log_path(info.id)
        kept = [p for p in log.parent.iterdir() if p.name.startswith("instance.log")]
        assert sorted(p.name for p in kept) == ["instance.log", "instance.log.1"]
        assert sum(p.stat().st_size for p in kept) <= limit + 64 * 1024
        newest = provider.tail_logs(info.id, 100_000)
        numbers = [int(line) for line in newest]
        assert numbers == list(range(numbers[0], 2_000_001))  # whole, in order, no gap
        assert len(numbers) > 50_000  # both files were read (each holds ~half a MiB)
    finally:
        provider.kill_all()


def test_terminate_signals_then_escalates_to_kill(provider: LocalProcessProvider) -> None:
    polite = provider.launch(spec("worker-0"))
    stubborn = provider.launch(spec("worker-1", IGNORE_TERM="1"))
    wait_until(lambda: len(provider.tail_logs(stubborn.id)) == 1, 10, "stubborn started")
    ids = [polite.id, stubborn.id]
    provider.terminate(ids)
    wait_until(lambda: not pid_alive(pid_of(provider, polite.id)), 10, "polite exit")
    assert pid_alive(pid_of(provider, stubborn.id))  # ignored SIGTERM

    def converged() -> bool:
        provider.terminate(ids)  # what the reconciler does on every pass
        return all(i.state == InstanceState.terminated for i in provider.describe("c-1"))

    wait_until(converged, 10, "stubborn killed after the grace period", interval=0.2)
    assert provider.list_deployment_instances() == []
    # the moment each was first seen gone is its termination time, and it stays put
    ended = {i.id: i.terminated_at for i in provider.describe("c-1")}
    assert all(t is not None and t >= polite.launched_at for t in ended.values())
    assert {i.id: i.terminated_at for i in provider.describe("c-1")} == ended
    assert provider.tail_logs(stubborn.id)  # logs outlive the instance


def test_sweep_deletes_scratch_of_finished_clusters_and_keeps_logs(
    provider: LocalProcessProvider,
) -> None:
    worker = provider.launch(spec("worker-0"))
    scratch = provider.instance_dir(worker.id) / "scratch"
    wait_until(lambda: provider.tail_logs(worker.id) != [], 10, "log line")
    env = (Path("/proc") / str(pid_of(provider, worker.id)) / "environ").read_bytes()
    assert f"DASK_TEMPORARY_DIRECTORY={scratch}".encode() in env.split(b"\0")
    (scratch / "worker-x").mkdir(parents=True)
    (scratch / "worker-x" / "spilled.bin").write_bytes(b"x" * 1024)

    assert provider.sweep_cluster_resources(lambda cluster_id: False) == []  # still running
    assert provider.sweep_cluster_resources(lambda cluster_id: True) == []
    assert scratch.exists()
    provider.terminate([worker.id])
    wait_until(lambda: provider.describe("c-1")[0].state == InstanceState.terminated, 10, "exit")
    assert provider.sweep_cluster_resources(lambda cluster_id: True) == []  # still active
    assert provider.sweep_cluster_resources(lambda cluster_id: False) == ["c-1"]
    assert not scratch.exists()
    assert provider.tail_logs(worker.id)  # logs outlive the sweep
    assert provider.sweep_cluster_resources(lambda cluster_id: False) == []  # nothing left


REPORTER = """#!/bin/sh
# Stands in for `python -m billow.agent`: reports what it was started with, then waits.
echo "cwd=$(pwd)"
echo "uid=$(id -u)"
echo "groups=$(id -G)"
env | sort | sed 's/^/env:/'
[ -n "$BILLOW_INSTANCE_TOKEN_FD" ] && echo "token=$(cat /dev/fd/$BILLOW_INSTANCE_TOKEN_FD)"
cat "$SECRET_FILE" >/dev/null 2>&1 && echo "read the secret"
echo "reported"
[ "$IGNORE_TERM" = 1 ] && trap '' TERM
[ -n "$FLOOD" ] && seq 1 "$FLOOD"
while true; do sleep 0.1; done
"""
# What an instance may inherit: its spec's variables, and those the provider sets.
PROVIDED = {
    "PATH",
    "LANG",
    "LC_ALL",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
    "HOME",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "BILLOW_INSTANCE_ID",
    "BILLOW_INSTANCE_DIR",
    "BILLOW_INSTANCE_NAME",
    "BILLOW_DEPLOYMENT",
    "BILLOW_ENV_CACHE",
    "BILLOW_INSTANCE_TOKEN_FD",
    "DASK_TEMPORARY_DIRECTORY",
}
SHELL_NOISE = {"PWD", "SHLVL", "_", "OLDPWD"}


def report(provider: LocalProcessProvider, instance_id: str) -> dict[str, object]:
    wait_until(lambda: "reported" in provider.tail_logs(instance_id, 500), 10, "report")
    lines = provider.tail_logs(instance_id, 500)
    env = dict(x.removeprefix("env:").split("=", 1) for x in lines if x.startswith("env:"))
    fields = dict(x.split("=", 1) for x in lines if not x.startswith("env:") and "=" in x)
    return {**fields, "env": env, "read_secret": "read the secret" in lines}


def test_an_instance_inherits_nothing_of_the_server_and_gets_its_token_through_a_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "BILLOW_TOKEN": "bw_admin",
        "BILLOW_SERVER": "http://server",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "7s",
        "DASK_CONFIG": str(tmp_path),
        "HOME": str(tmp_path / "server-home"),
        "PATH": f"{tmp_path}/bin:/usr/bin:/bin",
        "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
    }.items():
        monkeypatch.setenv(key, value)
    script = tmp_path / "reporter"
    script.write_text(REPORTER)
    script.chmod(0o755)
    provider = LocalProcessProvider(
        tmp_path / "instances", "test-deploy", SystemClock(), python=str(script)
    )
    try:
        token = "bwi_" + "t" * 43
        launched = provider.launch(
            spec("worker-0", BILLOW_INSTANCE_TOKEN=token, OMP_NUM_THREADS="1")
        )
        got = report(provider, launched.id)
        env = got["env"]
        assert isinstance(env, dict)
        directory = provider.instance_dir(launched.id)
        assert set(env) - SHELL_NOISE <= PROVIDED | {"BILLOW_ROLE", "OMP_NUM_THREADS"}, env
        assert env["OMP_NUM_THREADS"] == "1" and env["BILLOW_ROLE"] == "worker"
        # The interpreter's directory (here the stand-in's), then the system's.
        assert (
            env["PATH"]
            == f"{tmp_path}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        )
        assert env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"  # trust, no secret
        assert env["HOME"] == str(directory / "home") and (directory / "home").is_dir()
        assert got["cwd"] == str(directory)
        assert env["DASK_TEMPORARY_DIRECTORY"] == env["TMPDIR"] == str(directory / "scratch")
        assert got["token"] == token  # through the pipe, read once
        environ = (Path("/proc") / str(pid_of(provider, launched.id)) / "environ").read_bytes()
        assert token.encode() not in environ and b"BILLOW_INSTANCE_TOKEN=" not in environ
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    finally:
        provider.kill_all()


def test_agent_pythonpath_keeps_only_the_entries_billow_is_imported_from(tmp_path: Path) -> None:
    import billow
    import billow_control

    sdk = str(Path(billow.__file__).parents[1])
    functions = str(Path(billow_control.__file__).parents[1])
    other = str(tmp_path)
    got = agent_pythonpath({"PYTHONPATH": os.pathsep.join([other, sdk, functions])})
    installed = "site-packages" in sdk
    assert got == (None if installed else os.pathsep.join([sdk, functions]))
    assert agent_pythonpath({}) is None


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory in /tmp every user can reach (pytest's own is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="billow-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="per-owner OS users need root")
def test_owners_instances_run_as_os_users_of_their_own(tmp_path: Path, shared_tmp: Path) -> None:
    script = shared_tmp / "reporter"
    script.write_text(REPORTER)
    script.chmod(0o755)
    secret = tmp_path / "secret.key"  # as the data dir's: root's, in a 0700 directory
    secret.write_text("secret")
    provider = LocalProcessProvider(
        tmp_path / "instances",
        "test-deploy",
        SystemClock(),
        grace_period=0.5,
        python=str(script),
        workspace=shared_tmp / "work",
        accounts=TenantAccounts(),
    )
    owners = [f"u-{uuid.uuid4().hex[:16]}" for _ in range(2)]
    try:
        launched = {}
        for i, owner in enumerate(owners):
            s = spec(f"worker-{i}", SECRET_FILE=str(secret), IGNORE_TERM="1")
            s.tags["billow:owner"] = owner
            launched[owner] = provider.launch(s)
        reports = {owner: report(provider, info.id) for owner, info in launched.items()}
        uids = {owner: int(str(r["uid"])) for owner, r in reports.items()}
        assert len(set(uids.values())) == 2 and 0 not in uids.values()
        for owner, info in launched.items():
            got, directory = reports[owner], provider.instance_dir(info.id)
            account = pwd.getpwuid(uids[owner])
            assert account.pw_name == account_name(owner)
            assert account.pw_shell.endswith(("nologin", "false"))
            assert got["groups"] == str(account.pw_gid)  # none of the server's groups
            assert not got["read_secret"]
            for path in (directory, directory / "home", directory / "scratch"):
                st = path.stat()
                assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uids[owner], 0o700), path
            cache = Path(got["env"]["BILLOW_ENV_CACHE"])  # type: ignore[index]
            assert cache == shared_tmp / "work" / "users" / account.pw_name / "envs"
            assert cache.parent.stat().st_uid == uids[owner]
            assert provider.log_path(info.id).stat().st_uid == 0  # the server's, apart
        assert stat.S_IMODE((shared_tmp / "work").stat().st_mode) == 0o711

        # Root still stops them: SIGTERM is ignored, SIGKILL after the grace period.
        ids = [info.id for info in launched.values()]

        def stopped() -> bool:
            provider.terminate(ids)
            return all(i.state == InstanceState.terminated for i in provider.describe("c-1"))

        wait_until(stopped, 10, "instances killed", interval=0.2)
        recorded = provider._db().execute("SELECT owner FROM accounts").fetchall()
        assert sorted(r[0] for r in recorded) == sorted(owners)
    finally:
        provider.kill_all()
        remove_accounts(provider)
