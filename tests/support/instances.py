"""Booting cloud "instances" on this machine: the one harness that runs a real bootstrap
script (EC2 user data, a Compute Engine startup script) as a bare instance would.

``boot_script`` runs the script with ``bash`` in its own session, under its own root
(``BILLOW_ROOT``), with a ``python3`` on ``PATH`` that cannot import billow
(``InstanceKit.bare_env``), so the script must fetch the kit (``POST /v1/agent/kit``),
download uv and the billow wheel through pre-signed URLs, check them, build its venv and
run the agent from it. One machine hosts every "instance": loopback addresses,
OS-chosen ports, and a uv cache shared by all instances (``InstanceKit``). The script's
last line (``shutdown -h now``) becomes ``true``: the cloud harness (``tests/support/aws.py``
for EC2, ``tests/support/gcp_fakes/compute.py`` for Compute Engine) notices the script
ended and marks the instance as its cloud would. ``stop_instances`` stops every process
group by PID.

``InstanceKit`` builds what bare instances download: the uv binary of the ``uv`` package
installed here, and a billow wheel built from this repository (``uv build --wheel``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from billow_control.adapters.instance_bootstrap import AGENT_LOG
from billow_control.core.software import CORE_PACKAGES
from tests.support.processes import ROOT

# What the harness removes from its own environment before it runs an instance's script:
# anything that would let the image's python3 import this checkout's packages, and the
# test process's cloud and Billow configuration (a real instance has neither).
FOREIGN_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")
FOREIGN_PREFIXES = ("AWS_", "BILLOW_", "UV_", "GOOGLE_", "CLOUDSDK_")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}")


@dataclass
class InstanceKit:
    """The uv binary and billow wheel bare instances bootstrap with, and what every
    "instance" on this machine shares: a uv cache, and a ``bin`` directory whose
    ``python3`` is the base interpreter (billow is not importable there)."""

    root: Path
    uv: Path
    wheel: Path

    @property
    def uv_cache(self) -> Path:
        return self.root / "uv-cache"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def constraints(self) -> Path:
        return self.root / "constraints.txt"

    @classmethod
    def bare(cls, root: Path) -> InstanceKit:
        """Only the bare ``python3`` (no uv, no wheel): for scripts that never get a kit."""
        kit = cls(Path(root), Path(), Path())
        kit.bin_dir.mkdir(parents=True, exist_ok=True)
        kit.constraints.write_text("")
        python3 = kit.bin_dir / "python3"
        if not python3.exists():
            python3.symlink_to(Path(sys.base_prefix) / "bin" / "python3")
        return kit

    @classmethod
    def build(cls, root: Path) -> InstanceKit:
        """Build the wheel from this repository with the ``uv`` package's binary, make
        the bare ``python3``, and warm the shared uv cache by installing the wheel once
        (instances then install billow's dependencies from it in seconds)."""
        import uv as uv_package

        kit = cls.bare(root)
        kit.uv = Path(uv_package.find_uv_bin())
        # The instances' Dask is the client's (this process's): no version skew in tests.
        pins = [f"{name}=={version(name)}" for name in (*CORE_PACKAGES, "numpy")]
        kit.constraints.write_text("\n".join(pins) + "\n")
        env = kit.bare_env({"UV_CACHE_DIR": str(kit.uv_cache)})
        dist = kit.root / "dist"
        _check_run([str(kit.uv), "build", "--wheel", "--out-dir", str(dist), str(ROOT)], env)
        (kit.wheel,) = dist.glob("billow-*.whl")
        probe = subprocess.run(["python3", "-c", "import billow"], env=env, capture_output=True)
        if probe.returncode == 0:
            raise RuntimeError(f"billow is importable by {kit.bin_dir}: instances not bare")
        warm = kit.root / "warm"
        _check_run([str(kit.uv), "venv", "-q", "--python", ">=3.11", str(warm)], env)
        python = str(warm / "bin/python")
        _check_run([str(kit.uv), "pip", "install", "-q", "--python", python, str(kit.wheel)], env)
        return kit

    def bare_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """This process's environment as a bare instance would have it: no Python paths,
        cloud or Billow settings; ``PATH`` finds the bare ``python3`` first."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in FOREIGN_ENV and not k.startswith(FOREIGN_PREFIXES)
        }
        env |= {
            "PATH": f"{self.bin_dir}:/usr/bin:/bin",
            "PYTHONNOUSERSITE": "1",
            "UV_PYTHON_DOWNLOADS": "never",  # this machine reaches PyPI only
            "UV_CONSTRAINT": str(self.constraints),
        }
        return env | (extra or {})

    def objects(self) -> dict[str, Path]:
        """``{sha256: path}`` of uv and the wheel, as an object store names them."""
        return {sha256_of(path): path for path in (self.uv, self.wheel)}

    def settings_values(self) -> dict[str, str]:
        """The ``ControlSettings`` values naming uv and the wheel by sha256."""
        return {
            "uv_sha256": f"{platform.machine()}={sha256_of(self.uv)}",
            "agent_wheel": f"{sha256_of(self.wheel)}/{self.wheel.name}",
        }

    def settings_env(self) -> dict[str, str]:
        """The deployment variables naming uv and the wheel by sha256."""
        return {f"BILLOW_{k.upper()}": v for k, v in self.settings_values().items()}

    def upload(self, s3: Any, bucket: str, prefix: str = "objects/") -> dict[str, str]:
        """Put uv and the wheel into the env bucket by sha256, with the checksum S3
        verifies; return the deployment variables naming them."""
        for sha, path in self.objects().items():
            s3.put_object(
                Bucket=bucket,
                Key=f"{prefix}{sha}",
                Body=path.read_bytes(),
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha)).decode(),
            )
        return self.settings_env()


def exported_env(script: str) -> dict[str, str]:
    """The variables a bootstrap script exports (``export K=V`` lines, shell-quoted)."""
    env = {}
    for line in script.splitlines():
        if line.startswith("export "):
            key, _, value = shlex.split(line[len("export ") :])[0].partition("=")
            env[key] = value
    return env


@dataclass
class RunningInstance:
    instance_id: str
    proc: subprocess.Popen
    root: Path
    log_path: Path
    log_group: str = ""  # where the cloud's log agent ships the log (harness-specific)
    shipped: int = 0
    killed_at: float | None = None
    shut_down: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        """Whether any process of the instance's session is left (the script, or the
        agent it started, which outlives a killed script for a moment)."""
        self.proc.poll()  # reap the script, so a dead one is not counted
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def new_lines(self) -> list[str]:
        """The complete log lines written since the last call (what a log agent ships)."""
        if not self.log_path.exists():
            return []
        data = self.log_path.read_bytes()[self.shipped :]
        cut = data.rfind(b"\n") + 1
        self.shipped += cut
        return [line for line in data[:cut].decode(errors="replace").splitlines() if line]


def boot_script(
    kit: InstanceKit,
    root: Path,
    instance_id: str,
    script: str,
    log_path: str = AGENT_LOG,
    extra: dict[str, str] | None = None,
) -> RunningInstance:
    """Run bootstrap ``script`` as a bare instance ``instance_id`` under ``root`` (see the
    module docstring); ``log_path`` is where the script logs, under its root; ``extra``:
    more environment (a cloud harness's metadata endpoint, say)."""
    root.mkdir(parents=True)
    (root / "user-data").write_text(script)
    # One machine hosts every "instance": loopback only, ports the OS picks, one uv cache;
    # the script's last line (shutdown) becomes `true`, the cloud harness marks it.
    overrides = {
        "BILLOW_ROOT": str(root),
        "BILLOW_SHUTDOWN": "true",
        "BILLOW_SHUTDOWN_DELAY": "0",
        "BILLOW_HOST": "127.0.0.1",
        "BILLOW_SCHEDULER_PORT": "0",
        "BILLOW_DASHBOARD_PORT": "0",
        "UV_CACHE_DIR": str(kit.uv_cache),
        **(extra or {}),
    }
    with open(root / "console.log", "wb") as console:  # before the script's redirect
        proc = subprocess.Popen(
            ["bash", str(root / "user-data")],
            env=kit.bare_env(overrides),
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return RunningInstance(
        instance_id,
        proc,
        root,
        root / log_path.lstrip("/"),
        env=exported_env(script) | overrides,
    )


def stop_instances(instances: list[RunningInstance], grace: float) -> None:
    """SIGTERM every instance's process group, SIGKILL those left after ``grace``."""
    for inst in instances:
        inst.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for inst in instances:
        while inst.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if inst.alive():
            inst.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                inst.proc.wait(5)
