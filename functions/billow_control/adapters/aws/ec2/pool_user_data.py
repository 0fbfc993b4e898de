"""The user data of a warm-pool instance: prepare the instance kit, install the per-boot
hook, power off.

A pool instance belongs to no cluster yet, so its script carries no token, no cluster id
and no certificate. It carries the *deployment's* kit instead (``deployment_kit``:
pre-signed URLs of uv and of the deployment's agent wheel, with their sha256), because
``POST /v1/agent/kit`` needs an instance token. It:

1. installs ``PER_BOOT_HOOK`` as ``/var/lib/cloud/scripts/per-boot/billow-bootstrap.sh``
   (cloud-init's ``scripts-per-boot`` module, frequency *always*, runs that directory at
   every boot). At each boot the hook reads the instance's *current* user data from
   IMDSv2 and runs it when it is a Billow bootstrap (it exports ``BILLOW_INSTANCE_TOKEN``).
   That is how the bootstrap written by ``ModifyInstanceAttribute`` while the instance was
   stopped runs on the start that hands it to a cluster. Reading IMDS itself, rather than
   cloud-init's copy, does not depend on cloud-init refetching user data on a reboot of
   the same instance id. On the pool's own first boot the hook is written after
   ``scripts-per-boot`` ran, and the user data is not a bootstrap anyway: it does nothing;
2. installs the CloudWatch agent (as the bootstrap would);
3. runs the bootstrap's ``KIT_INSTALL`` part on the carried kit in the bootstrap's own
   directory (``$B``): uv, the agent wheel and the agent's venv, uv's cache
   (``$B/uv-cache``) and the Python uv downloads (``$B/python``) are on the volume. The
   bootstrap at the start that hands the instance to a cluster keeps the files whose
   sha256 its kit names and the venv, so it downloads nothing for a cluster of the
   deployment's own agent (a cluster with software of its own still installs its
   requirements into that venv);
4. powers off: ``InstanceInitiatedShutdownBehavior=stop`` leaves the instance ``stopped``.

Whatever fails in 2-3, the instance still powers off: a cold kit only costs time later.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from ...instance_bootstrap import AGENT_HOME, KIT_INSTALL, joined_script

MAX_POOL_USER_DATA = 16000  # bytes; EC2 allows 16 KB (the pre-signed URLs are long)
PER_BOOT_DIR = "/var/lib/cloud/scripts/per-boot"
POOL_LOG = "/var/log/billow-pool.log"

PER_BOOT_HOOK = """#!/bin/bash
# Billow warm pool: at every boot, run the instance's current user data when it is a
# Billow bootstrap (a cluster took this stopped instance and replaced its user data).
umask 077
M=http://169.254.169.254/latest U="${BILLOW_ROOT:-}/run/billow-user-data"
mkdir -p "${U%/*}"
T=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' $M/api/token) || exit 0
curl -sf -H "X-aws-ec2-metadata-token: $T" -o "$U" $M/user-data || exit 0
grep -q '^export BILLOW_INSTANCE_TOKEN=' "$U" || exit 0
exec bash "$U"
"""

# Reads the kit from the environment instead of asking the control plane for it.
_KIT_FROM_ENV = r"""
import hashlib,json,os,platform,subprocess as sp,sys,time,urllib.request as u
b,e=sys.argv[1],os.environ
def log(m):print("billow pool:",m,flush=True)
def die(m):sys.exit("billow pool: "+m)
kit=json.loads(e["BILLOW_POOL_KIT"])
"""
# The bootstrap's install part without its last line (which announces the agent).
_INSTALL = KIT_INSTALL.strip().rsplit("\n", 1)[0]


def deployment_kit(
    uv_sha256: Mapping[str, str], agent_wheel: str | None, download_url: Callable[[str], str]
) -> dict[str, Any] | None:
    """The kit of a cluster without software of its own (what ``ClusterAgents.kit``
    answers then), or ``None`` when the deployment has no uv or agent wheel configured."""
    if not uv_sha256 or not agent_wheel:
        return None
    wheel_sha256, _, filename = agent_wheel.partition("/")
    return {
        "uv": {m: {"sha256": s, "url": download_url(s)} for m, s in sorted(uv_sha256.items())},
        "wheel": {"sha256": wheel_sha256, "filename": filename, "url": download_url(wheel_sha256)},
        "pip_args": [],
        "python": ">=3.11",
    }


def render_pool_user_data(kit: Mapping[str, Any]) -> str:
    """The pool script for ``kit`` (see the module docstring).

    Raises ``ValueError`` when the script would reach ``MAX_POOL_USER_DATA`` bytes.
    """
    lines = [
        "#!/bin/bash",
        "# Billow warm pool: prepares the instance kit for a cluster not known yet, then",
        "# powers off (InstanceInitiatedShutdownBehavior=stop). No token, no cluster.",
        "umask 077",
        'R="${BILLOW_ROOT:-}"',
        f'B="$R{AGENT_HOME}"',
        f'mkdir -p "$R/var/log" "$B" "$R{PER_BOOT_DIR}"',
        f'exec >>"$R{POOL_LOG}" 2>&1',
        f"cat >\"$R{PER_BOOT_DIR}/billow-bootstrap.sh\" <<'BILLOW_HOOK'",
        PER_BOOT_HOOK.rstrip("\n"),
        "BILLOW_HOOK",
        f'chmod 700 "$R{PER_BOOT_DIR}/billow-bootstrap.sh"',
        'if [ -z "$R" ] && command -v dnf >/dev/null; then',
        "  dnf install -y -q amazon-cloudwatch-agent || true",
        "fi",
        f"export BILLOW_POOL_KIT={shlex.quote(json.dumps(kit, separators=(',', ':')))}",
        'export UV_CACHE_DIR="$B/uv-cache" UV_PYTHON_INSTALL_DIR="$B/python"',
        "export BILLOW_PYTHON_DOWNLOADS=automatic",
        "python3 - \"$B\" <<'BILLOW_KIT'",
        _KIT_FROM_ENV.strip() + "\n" + _INSTALL,
        "BILLOW_KIT",
        'echo "billow pool: kit prepared with code $?"',
        "sync",
        "${BILLOW_SHUTDOWN:-shutdown -h now}  # InstanceInitiatedShutdownBehavior=stop",
        "",
    ]
    return joined_script(lines, MAX_POOL_USER_DATA, "the pool script")


__all__ = [
    "MAX_POOL_USER_DATA",
    "PER_BOOT_HOOK",
    "deployment_kit",
    "render_pool_user_data",
]
