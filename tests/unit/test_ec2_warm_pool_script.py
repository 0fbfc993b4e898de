"""The warm pool's user data and per-boot hook, run with bash on this machine (no AWS):
the pool script prepares the kit from what it carries and powers off; the hook it
installs runs the instance's user data at a later boot only when it is a bootstrap.

Stand-ins: the kit's "uv" is a small shell script recording its calls (served by a
``file://`` URL, checked by sha256 like the real one); ``curl`` on ``PATH`` answers the
hook's two IMDSv2 requests from a file; ``BILLOW_SHUTDOWN`` replaces ``shutdown -h now``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from billow_control.adapters.aws.ec2 import EC2Settings, render_user_data
from billow_control.adapters.aws.ec2.pool_user_data import (
    MAX_POOL_USER_DATA,
    PER_BOOT_DIR,
    deployment_kit,
    render_pool_user_data,
)
from billow_control.adapters.instance_bootstrap import FETCH_KIT, KIT_INSTALL, KIT_REQUEST
from billow_control.runtimes.aws import ConfigError, ec2_settings

pytestmark = pytest.mark.unit

FAKE_UV = """#!/bin/bash
echo "uv $*" >> "$UV_CALLS"
if [ "$1" = venv ]; then mkdir -p "${@: -1}/bin" && touch "${@: -1}/bin/python"; fi
"""
CURL = """#!/bin/bash
case "$*" in
  *api/token*) echo imds-token ;;
  *user-data*) while [ "$1" != -o ]; do shift; done; cp "$FAKE_USER_DATA" "$2" ;;
esac
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_fetch_kit_snippet_is_its_two_parts() -> None:
    assert KIT_REQUEST + KIT_INSTALL.lstrip("\n") == FETCH_KIT
    assert KIT_INSTALL.strip().endswith('log(f"starting the agent from {v}")')


def test_pool_script_prepares_the_kit_installs_the_hook_and_powers_off(tmp_path: Path) -> None:
    uv = executable(tmp_path / "uv-bin", FAKE_UV)
    wheel = tmp_path / "billow-1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    kit = deployment_kit(
        {os.uname().machine: sha256(uv)},
        f"{sha256(wheel)}/{wheel.name}",
        lambda digest: (uv if digest == sha256(uv) else wheel).as_uri(),
    )
    assert kit is not None
    script = render_pool_user_data(kit)
    assert len(script.encode()) < MAX_POOL_USER_DATA
    assert "BILLOW_INSTANCE_TOKEN=" not in script.replace("'^export BILLOW_INSTANCE_TOKEN='", "")
    root = tmp_path / "root"
    env = {
        "PATH": os.environ["PATH"],
        "BILLOW_ROOT": str(root),
        "BILLOW_SHUTDOWN": f"touch {root}/powered-off",
        "UV_CALLS": str(tmp_path / "uv-calls"),
    }
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=60)
    log = (root / "var/log/billow-pool.log").read_text()
    assert (root / "powered-off").exists(), log
    assert "checked" in log and "kit prepared with code 0" in log
    calls = (tmp_path / "uv-calls").read_text()
    agent = root / "opt/billow/agent"
    assert "uv venv" in calls and f"pip install -q --python {agent}/bin/python" in calls

    # The bootstrap's install on the start that hands the instance out: the files the pool
    # prepared pass its sha256 check and the venv stays; nothing is downloaded again (the
    # sources are gone, so a download would fail).
    uv_source, wheel_source = uv.read_bytes(), wheel.read_bytes()
    uv.unlink()
    wheel.unlink()
    helpers = KIT_REQUEST.split("q=u.Request", 1)[0]  # its imports, log and die
    install = f"{helpers}kit=json.loads({json.dumps(json.dumps(kit))})\n{KIT_INSTALL}"
    started = subprocess.run(
        [sys.executable, "-c", install, str(root / "opt/billow")],
        env={**env, "UV_CALLS": str(tmp_path / "uv-calls-start")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.count("already here, sha256 checked") == 2, started.stdout
    start_calls = (tmp_path / "uv-calls-start").read_text()
    assert "uv venv" not in start_calls and "pip install" in start_calls
    assert (root / "opt/billow/uv").read_bytes() == uv_source
    assert (root / "opt/billow" / wheel.name).read_bytes() == wheel_source
    hook = root / PER_BOOT_DIR.lstrip("/") / "billow-bootstrap.sh"
    assert hook.stat().st_mode & stat.S_IXUSR

    # A later boot: the hook runs the current user data only when it is a bootstrap.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "curl", CURL)
    boot_env = {**env, "PATH": f"{bin_dir}:{env['PATH']}"}
    user_data = tmp_path / "user-data"
    user_data.write_text(script.replace(f"touch {root}/powered-off", "true"))
    boot_env["FAKE_USER_DATA"] = str(user_data)
    before = log
    subprocess.run(["bash", str(hook)], env=boot_env, check=True, timeout=30)
    assert (root / "var/log/billow-pool.log").read_text() == before  # the pool's: not run
    settings = EC2Settings(ami_id="ami-0123456789abcdef0", allowed_cidr="203.0.113.7/32")
    bootstrap = render_user_data(
        {
            "BILLOW_CONTROL_URL": "http://127.0.0.1:9",
            "BILLOW_INSTANCE_TOKEN": "bit_fresh",
            "BILLOW_ROLE": "worker",
            "BILLOW_CLUSTER_ID": "c-1",
        },
        settings,
    )
    # Stop the bootstrap right after its exports: the control plane is not the subject.
    user_data.write_text(
        bootstrap.replace("python3 - ", 'echo "ran with $BILLOW_INSTANCE_TOKEN"; exit 0 #', 1)
    )
    subprocess.run(["bash", str(hook)], env=boot_env, check=True, timeout=30)
    assert "ran with bit_fresh" in (root / "var/log/billow-agent.log").read_text()


def test_pool_size_comes_from_its_variable() -> None:
    assert ec2_settings({}).warm_pool_size == 0
    config = ec2_settings({"BILLOW_WARM_POOL_SIZE": "3", "BILLOW_WARM_POOL_TYPES": "m7g.large"})
    assert config.warm_pool_size == 3 and config.warm_pool_types == ["m7g.large"]
    with pytest.raises(ConfigError, match="BILLOW_WARM_POOL_SIZE"):
        ec2_settings({"BILLOW_WARM_POOL_SIZE": "-1"})
    with pytest.raises(ConfigError, match="BILLOW_WARM_POOL_TYPES"):
        ec2_settings({"BILLOW_WARM_POOL_TYPES": "large"})


def test_no_kit_means_no_pool_script() -> None:
    assert deployment_kit({}, "a" * 64 + "/w.whl", str) is None
    assert deployment_kit({"x86_64": "a" * 64}, None, str) is None


def test_pool_script_fits_with_lambda_sized_presigned_urls() -> None:
    """A Lambda signs with session credentials: each pre-signed URL carries a security
    token (about 1.5 KiB in all). Two uv binaries and the wheel stay far below EC2's 16 KB."""
    url = "https://b.s3.amazonaws.com/objects/x?" + "X-Amz-Security-Token=" + "t" * 2000
    kit = deployment_kit(
        {"x86_64": "a" * 64, "aarch64": "c" * 64}, "b" * 64 + "/w.whl", lambda s: url
    )
    assert kit is not None
    assert len(render_pool_user_data(kit).encode()) < 12000
