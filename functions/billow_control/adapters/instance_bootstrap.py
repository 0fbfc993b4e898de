"""The bootstrap script every cloud instance runs, shared by EC2 user data
(``aws/ec2/user_data.py``) and the Compute Engine startup script
(``gcp/compute/startup_script.py``); each cloud adds only its log shipping and its ending.

It carries only the control-plane URL, the one-time instance token, the role and the
cluster id (``BOOTSTRAP_ENV``); no secret beyond that token reaches the cloud's instance
attributes. The image needs bash and a ``python3`` (any version: it runs the stdlib-only
``FETCH_KIT`` snippet), nothing of Billow's:

1. ``POST /v1/agent/kit`` with the token (which stays unused) answers pre-signed URLs and
   sha256s of a pinned uv binary per machine and of the billow wheel to start with
   (``ClusterAgents.kit``).
2. The snippet downloads both to ``$BILLOW_ROOT/opt/billow``, checks their sha256, makes a
   venv with uv (``uv venv --python '>=3.11'``: uv downloads a Python if the image has
   none that fits) and installs the wheel into it.
3. The script runs ``<venv>/bin/python -m billow.agent`` (stage 1: it trades the token
   for certificates and config, builds the cluster's own environment under
   ``BILLOW_ENV_CACHE`` when the cluster has ``software``, and execs stage 2 from it), as
   its child, so that once the agent exits the script logs its exit code and shuts the
   instance down.

Everything it writes is under ``${BILLOW_ROOT:-}`` (empty on a real instance), the listen
address and ports keep values already in the environment, and ``BILLOW_SHUTDOWN`` (default
``shutdown -h now``) and ``BILLOW_SHUTDOWN_DELAY`` (default 15 s for the log agent) replace
the ending, so tests run these very scripts on one machine (``tests/support/instances.py``).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

BOOTSTRAP_ENV = ("BILLOW_CONTROL_URL", "BILLOW_INSTANCE_TOKEN", "BILLOW_ROLE", "BILLOW_CLUSTER_ID")
AGENT_LOG = "/var/log/billow-agent.log"  # under $BILLOW_ROOT
AGENT_HOME = "/opt/billow"  # under $BILLOW_ROOT: uv, the wheel, the venv, environments

# Runs under the image's python3 (stdlib only), with the kit directory as argv[1]. Its
# lines are short on purpose: EC2's whole script must stay below 4 KiB. Two parts: asking
# the control plane for the kit with the instance token, then downloading, checking and
# installing it (the EC2 warm pool's script runs the second part with a kit it carries,
# into the same directory: files already there with the kit's sha256, and the venv, are
# kept, so a pooled instance's start downloads nothing).
KIT_REQUEST = r"""
import hashlib,json,os,platform,subprocess as sp,sys,time,urllib.request as u
b,e=sys.argv[1],os.environ
def log(m):print("billow bootstrap:",m,flush=True)
def die(m):sys.exit("billow bootstrap: "+m)
q=u.Request(e["BILLOW_CONTROL_URL"].rstrip("/")+"/v1/agent/kit",b"",
 {"Authorization":"Bearer "+e["BILLOW_INSTANCE_TOKEN"]})
for i in range(60):
 try:kit=json.load(u.urlopen(q,timeout=30));break
 except u.HTTPError as x:
  if x.code<500 and x.code!=429:die(f"kit refused: HTTP {x.code} {x.read(2000).decode()}")
  m=x
 except OSError as x:m=x
 log(f"control plane unreachable ({m}); retrying");time.sleep(min(i+1,10))
else:die("gave up waiting for the control plane")
"""
KIT_INSTALL = r"""
a=platform.machine();w=kit["wheel"]
if a not in kit["uv"]:die(f"the kit has no uv for {a}")
for k,p in (kit["uv"][a],b+"/uv"),(w,b+"/"+w["filename"]):
 if os.path.isfile(p)and hashlib.sha256(open(p,"rb").read()).hexdigest()==k["sha256"]:
  log(f"kit: {p} already here, sha256 checked");continue
 for i in range(3):
  h=hashlib.sha256()
  try:
   with u.urlopen(k["url"],timeout=60) as r,open(p,"wb") as f:
    while c:=r.read(1<<20):h.update(c);f.write(c)
   break
  except OSError as x:log(f"downloading {p}: {x}");time.sleep(2)
 else:die(f"cannot download {p}")
 if h.hexdigest()!=k["sha256"]:die(f"{p} does not match sha256 {k['sha256']}")
 log(f"kit: {p} ({os.path.getsize(p)} bytes, sha256 {k['sha256'][:12]}) checked")
os.chmod(b+"/uv",0o700)
v=b+"/agent"
if not os.path.exists(v+"/bin/python")and sp.call([b+"/uv","venv","-q","--python",kit["python"],v]):
 die("uv venv failed")
if sp.call([b+"/uv","pip","install","-q","--python",v+"/bin/python",*kit["pip_args"],p]):
 die("installing the agent failed")
log(f"starting the agent from {v}")
"""
FETCH_KIT = KIT_REQUEST + KIT_INSTALL.lstrip("\n")


def check_environment(environment: Mapping[str, str]) -> None:
    """Raise ``ValueError`` naming the ``BOOTSTRAP_ENV`` variables missing or empty."""
    missing = [k for k in BOOTSTRAP_ENV if not environment.get(k)]
    if missing:
        raise ValueError(f"instance environment lacks {', '.join(missing)}")


def bootstrap_script(
    environment: Mapping[str, str],
    *,
    scheduler_port: int,
    dashboard_port: int,
    log_setup: Sequence[str],
    shutdown: str,
    max_bytes: int,
    defaults: Mapping[str, str] | None = None,
) -> str:
    """The bash bootstrap script: the four ``BOOTSTRAP_ENV`` variables of ``environment``
    and nothing else secret, the cloud's ``log_setup`` lines (run before the kit is
    fetched, so the log agent ships every line), its ``shutdown`` line, and its own
    ``defaults`` of variables the agent reads (each overridable from the environment).

    Raises
    ------
    ValueError
        If one of ``BOOTSTRAP_ENV`` is missing or empty, or the script would reach
        ``max_bytes`` bytes.
    """
    check_environment(environment)
    defaults = {
        "BILLOW_HOST": "0.0.0.0",
        "BILLOW_SCHEDULER_PORT": str(scheduler_port),
        "BILLOW_DASHBOARD_PORT": str(dashboard_port),
        "UV_CACHE_DIR": "$B/uv-cache",
        "UV_PYTHON_INSTALL_DIR": "$B/python",
        **(defaults or {}),
    }
    lines = [
        "#!/bin/bash",
        "# Billow bootstrap: only the control-plane URL and a one-time token travel here.",
        "# It fetches uv and the billow wheel (POST /v1/agent/kit, pre-signed URLs), checks",
        "# their sha256 and runs the agent, which trades the token for certificates.",
        "umask 077",
        'R="${BILLOW_ROOT:-}"',
        f'B="$R{AGENT_HOME}"',
        f'mkdir -p "$R{AGENT_LOG.rsplit("/", 1)[0]}" "$B"',
        f'exec >>"$R{AGENT_LOG}" 2>&1',
        *(f"export {k}={shlex.quote(environment[k])}" for k in BOOTSTRAP_ENV),
        *(f'export {k}="${{{k}:-{v}}}"' for k, v in defaults.items()),
        'export PYTHONUNBUFFERED=1 BILLOW_ENV_CACHE="$B/envs" BILLOW_PYTHON_DOWNLOADS=automatic',
        *log_setup,
        'python3 - "$B" <<\'BILLOW_KIT\' && "$B/agent/bin/python" -m billow.agent',
        FETCH_KIT.strip(),
        "BILLOW_KIT",
        'echo "billow: agent exited with code $?"',
        'sleep "${BILLOW_SHUTDOWN_DELAY:-15}"  # let the log agent ship the last lines',
        shutdown,
        "",
    ]
    return joined_script(lines, max_bytes, "the bootstrap script")


def joined_script(lines: list[str], max_bytes: int, what: str) -> str:
    """``lines`` as one script; ``ValueError`` naming ``what`` when it would reach
    ``max_bytes`` bytes (the user-data or metadata limit of the cloud)."""
    script = "\n".join(lines)
    size = len(script.encode())
    if size >= max_bytes:
        raise ValueError(f"{what} is {size} bytes; it must stay below {max_bytes}")
    return script
