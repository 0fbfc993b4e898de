"""Forwarding the client's cloud credentials to the workers, as Coiled does.

On the client, ``obtain`` makes short-lived credentials from the local identity:

* **AWS** (boto3's credential chain): long-term keys are traded for STS session
  credentials (``GetSessionToken``, ``duration`` seconds, at least STS's 900);
  credentials that are already temporary (a session token: SSO, an assumed role, a
  session in the environment) are forwarded as they are.
* **Google** (google-auth's application default credentials, only when a credentials
  file is configured: ``GOOGLE_APPLICATION_CREDENTIALS`` or gcloud's ADC file, so a
  laptop never waits on the metadata server): an OAuth access token.

``billow.Cluster`` sends them to the scheduler over its mutual-TLS Dask connection,
never through the control plane, as the worker plugin ``CredentialsPlugin``: the
scheduler keeps it in memory and hands it to every worker, present and future, which
sets the standard variables and files (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_SHARED_CREDENTIALS_FILE`` for boto3 and s3fs;
``CLOUDSDK_AUTH_ACCESS_TOKEN``, ``GOOGLE_OAUTH_ACCESS_TOKEN`` and a token file for gcloud
and gcsfs ``token=``). The cluster sends fresh ones at half their lifetime for as long as
it is open in the client.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

log = logging.getLogger("billow.credentials")

PLUGIN_NAME = "billow-credentials"
STS_MIN_SECONDS = 900
DEFAULT_DURATION = 3600
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
GCP_VARIABLES = ("CLOUDSDK_AUTH_ACCESS_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN")


@dataclass(repr=False)
class Forwarded:
    """Short-lived credentials and when they expire (Unix seconds). Never printed."""

    aws: dict[str, str] | None = None
    gcp_token: str | None = None
    expires_at: float = field(default_factory=lambda: time.time() + DEFAULT_DURATION)

    def __repr__(self) -> str:
        return f"<Forwarded aws={self.aws is not None} gcp={self.gcp_token is not None}>"

    @property
    def empty(self) -> bool:
        return self.aws is None and self.gcp_token is None


def _aws(duration: int) -> tuple[dict[str, str], float | None] | None:
    """AWS session credentials and their expiry, or ``None`` with no AWS identity."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        return None
    session = boto3.Session()
    found = session.get_credentials()
    if found is None:
        return None
    frozen = found.get_frozen_credentials()
    if frozen.token:  # already temporary: forward as is, until the chain's own expiry
        expiry = getattr(found, "_expiry_time", None)
        creds = {
            "AWS_ACCESS_KEY_ID": frozen.access_key,
            "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
            "AWS_SESSION_TOKEN": frozen.token,
        }
        return creds, expiry.timestamp() if isinstance(expiry, datetime) else None
    sts = session.client(
        "sts",
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
    )
    answer = sts.get_session_token(DurationSeconds=max(STS_MIN_SECONDS, duration))["Credentials"]
    creds = {
        "AWS_ACCESS_KEY_ID": answer["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": answer["SecretAccessKey"],
        "AWS_SESSION_TOKEN": answer["SessionToken"],
    }
    return creds, answer["Expiration"].timestamp()


def _gcp_configured() -> bool:
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return True
    root = os.environ.get("CLOUDSDK_CONFIG") or str(Path.home() / ".config" / "gcloud")
    return (Path(root) / "application_default_credentials.json").is_file()


def _gcp() -> tuple[str, float | None] | None:
    """A Google access token and its expiry, or ``None`` without configured credentials."""
    if not _gcp_configured():
        return None
    try:
        import google.auth
        from google.auth.transport.requests import Request
    except ImportError:
        return None
    creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    creds.refresh(Request())
    expiry = getattr(creds, "expiry", None)  # naive UTC
    return creds.token, expiry.replace(tzinfo=UTC).timestamp() if expiry else None


def obtain(duration: int = DEFAULT_DURATION) -> tuple[Forwarded, list[str]]:
    """Credentials from this client's identities, and a note per identity that failed
    (never raises: a client without a cloud identity still gets its cluster)."""
    out = Forwarded(expires_at=time.time() + duration)
    notes: list[str] = []
    for name, get in (("AWS", lambda: _aws(duration)), ("Google", _gcp)):
        try:
            found = get()
        except Exception as e:  # no network, an expired SSO session, a refused call
            notes.append(f"{name} credentials not forwarded: {type(e).__name__}: {e}")
            continue
        if found is None:
            continue
        value, expiry = found
        if name == "AWS":
            out.aws = value  # type: ignore[assignment]
        else:
            out.gcp_token = value  # type: ignore[assignment]
        if expiry is not None:
            out.expires_at = min(out.expires_at, expiry)
    return out, notes


class CredentialsPlugin(WorkerPlugin):
    """Sets forwarded credentials on a worker (its environment and files of its own).

    Registered again with fresh credentials, it replaces the old ones. The files are in
    ``<worker local directory>/billow-credentials`` (mode 0700, files 0600).
    """

    name = PLUGIN_NAME
    idempotent = False

    def __init__(self, forwarded: Forwarded) -> None:
        self.forwarded = forwarded

    def __repr__(self) -> str:
        return f"<CredentialsPlugin {self.forwarded!r}>"

    def setup(self, worker: Any) -> None:
        directory = Path(getattr(worker, "local_directory", None) or os.getcwd())
        directory = directory / "billow-credentials"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        env: dict[str, str] = {}
        aws, token = self.forwarded.aws, self.forwarded.gcp_token
        if aws:
            env.update(aws)
            lines = [
                "[default]",
                f"aws_access_key_id = {aws['AWS_ACCESS_KEY_ID']}",
                f"aws_secret_access_key = {aws['AWS_SECRET_ACCESS_KEY']}",
                f"aws_session_token = {aws['AWS_SESSION_TOKEN']}",
            ]
            env["AWS_SHARED_CREDENTIALS_FILE"] = _write(directory / "aws", "\n".join(lines))
        if token:
            env.update(dict.fromkeys(GCP_VARIABLES, token))
            env["BILLOW_GCP_TOKEN_FILE"] = _write(directory / "gcp-token", token)
        os.environ.update(env)


def _write(path: Path, text: str) -> str:
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    partial.replace(path)  # readers see the old file or the new one, never half of one
    return str(path)


async def send(scheduler_comm: Any, forwarded: Forwarded) -> None:
    """Hand ``forwarded`` to the scheduler over the cluster's TLS connection, for every
    worker present and future (the scheduler's worker-plugin registry)."""
    from distributed.protocol.pickle import dumps

    answers = await scheduler_comm.register_worker_plugin(
        plugin=dumps(CredentialsPlugin(forwarded)), name=PLUGIN_NAME, idempotent=False
    )
    failed = [w for w, a in (answers or {}).items() if a.get("status") != "OK"]
    if failed:  # the message may quote a path, never the credentials
        log.warning("credentials not set on %d worker(s): %s", len(failed), failed[:3])


class Forwarder:
    """Keeps a cluster's workers supplied: sends credentials at start, then fresh ones at
    half their lifetime, until ``stop``. Failures are logged, never raised."""

    def __init__(self, scheduler_comm: Any, duration: int) -> None:
        self.scheduler_comm = scheduler_comm
        self.duration = duration
        self.sent = 0
        self._task: Any = None

    async def start(self, first: Any) -> list[str]:
        """Send what ``first`` (an awaitable of ``obtain``'s answer) gives; returns the
        notes for the user (empty when something was forwarded)."""
        import asyncio

        forwarded, notes = await first
        if forwarded.empty:
            return notes or [
                "no AWS or Google credentials on this client: none forwarded to the cluster "
                "(credentials=None turns forwarding and this notice off)"
            ]
        await send(self.scheduler_comm, forwarded)
        self.sent += 1
        self._task = asyncio.ensure_future(self._refresh(forwarded))
        return notes

    async def _refresh(self, forwarded: Forwarded) -> None:
        import asyncio

        while True:
            await asyncio.sleep(refresh_delay(forwarded))
            try:
                fresh, notes = await asyncio.to_thread(obtain, self.duration)
                for note in notes:
                    log.warning(note)
                if not fresh.empty:
                    await send(self.scheduler_comm, fresh)
                    self.sent += 1
                    forwarded = fresh
            except Exception as e:  # the scheduler restarting, the network: next time
                log.warning("refreshing forwarded credentials failed: %s", type(e).__name__)
                forwarded = Forwarded(expires_at=time.time() + 60)  # again in 30 s

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def refresh_delay(forwarded: Forwarded, now: float | None = None) -> float:
    """Seconds until the next refresh: half the time left, at least one second."""
    left = forwarded.expires_at - (time.time() if now is None else now)
    return max(1.0, left / 2)
