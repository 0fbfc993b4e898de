"""The instance bootstrap script (EC2 user data).

It carries only the control-plane URL, the one-time instance token, the role and the
cluster id; no secret beyond that token ever reaches EC2's instance attributes. The image
needs bash and a ``python3`` (any version: it runs the stdlib-only snippet below), nothing
of Billow's:

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
   instance down (``InstanceInitiatedShutdownBehavior=terminate``).

Everything it writes is under ``${BILLOW_ROOT:-}`` (empty on EC2), the listen address and
ports keep values already in the environment, and ``BILLOW_SHUTDOWN`` (default
``shutdown -h now``) and ``BILLOW_SHUTDOWN_DELAY`` (default 15 s for the log agent) replace
the ending, so tests run this very script on one machine (``tests/support/aws.py``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping

from .settings import EC2Settings

MAX_USER_DATA = 4096  # bytes of script; EC2 allows 16 KB, we stay far below it
BOOTSTRAP_ENV = ("BILLOW_CONTROL_URL", "BILLOW_INSTANCE_TOKEN", "BILLOW_ROLE", "BILLOW_CLUSTER_ID")
AGENT_LOG = "/var/log/billow-agent.log"  # under $BILLOW_ROOT
AGENT_HOME = "/opt/billow"  # under $BILLOW_ROOT: uv, the wheel, the venv, environments
_CW_CTL = "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl"

# Runs under the image's python3 (stdlib only), with the kit directory as argv[1]. Its
# lines are short on purpose: the whole script must stay below MAX_USER_DATA bytes.
FETCH_KIT = r"""
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
a=platform.machine();w=kit["wheel"]
if a not in kit["uv"]:die(f"the kit has no uv for {a}")
for k,p in (kit["uv"][a],b+"/uv"),(w,b+"/"+w["filename"]):
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
if sp.call([b+"/uv","venv","-q","--python",kit["python"],v]):die("uv venv failed")
if sp.call([b+"/uv","pip","install","-q","--python",v+"/bin/python",*kit["pip_args"],p]):
 die("installing the agent failed")
log(f"starting the agent from {v}")
"""


def render_user_data(environment: Mapping[str, str], settings: EC2Settings) -> str:
    """The bootstrap script: the four ``BOOTSTRAP_ENV`` variables of ``environment`` and
    nothing else secret.

    Raises
    ------
    ValueError
        If one of ``BOOTSTRAP_ENV`` is missing or empty, or the script would reach
        ``MAX_USER_DATA`` bytes.
    """
    missing = [k for k in BOOTSTRAP_ENV if not environment.get(k)]
    if missing:
        raise ValueError(f"instance environment lacks {', '.join(missing)}")
    defaults = {
        "BILLOW_HOST": "0.0.0.0",
        "BILLOW_SCHEDULER_PORT": str(settings.scheduler_port),
        "BILLOW_DASHBOARD_PORT": str(settings.dashboard_port),
        "BILLOW_IMDS_ENDPOINT": "http://169.254.169.254",  # the agent's addresses (IMDSv2)
        "UV_CACHE_DIR": "$B/uv-cache",
        "UV_PYTHON_INSTALL_DIR": "$B/python",
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
        'if [ -z "$R" ] && command -v dnf >/dev/null; then',
        "  dnf install -y -q amazon-cloudwatch-agent || true",
        "fi",
        f'if [ -x "$R{_CW_CTL}" ]; then',
        "  cat >\"$R/opt/billow-logs.json\" <<'BILLOW_LOGS'",
        _logs_config(settings.log_group),
        "BILLOW_LOGS",
        f'  "$R{_CW_CTL}" -a fetch-config -m ec2 -s -c "file:$R/opt/billow-logs.json" || true',
        "fi",
        'python3 - "$B" <<\'BILLOW_KIT\' && "$B/agent/bin/python" -m billow.agent',
        FETCH_KIT.strip(),
        "BILLOW_KIT",
        'echo "billow: agent exited with code $?"',
        'sleep "${BILLOW_SHUTDOWN_DELAY:-15}"  # let the log agent ship the last lines',
        "${BILLOW_SHUTDOWN:-shutdown -h now}  # InstanceInitiatedShutdownBehavior=terminate",
        "",
    ]
    script = "\n".join(lines)
    size = len(script.encode())
    if size >= MAX_USER_DATA:
        raise ValueError(f"user data is {size} bytes; it must stay below {MAX_USER_DATA}")
    return script


def _logs_config(log_group: str) -> str:
    """CloudWatch agent configuration shipping ``AGENT_LOG`` to ``log_group``, one stream
    per instance (named after its id, which ``EC2Provider.tail_logs`` reads)."""
    collect = {
        "file_path": AGENT_LOG,
        "log_group_name": log_group,
        "log_stream_name": "{instance_id}",
    }
    return json.dumps({"logs": {"logs_collected": {"files": {"collect_list": [collect]}}}})
