"""Use cases of the cluster's own processes: the instance kit a bare instance downloads,
the one-time bootstrap exchange, and the scheduler plugin's heartbeats.

Each authenticates by a token only that process holds (a one-time instance token, the
cluster's heartbeat token), never by a user's API token.
"""

from __future__ import annotations

import json
from typing import Any

from .auth import CLUSTER_TOKEN_PREFIX, hash_token, new_token, same_hash
from .convergence import converged
from .errors import Conflict, NotFound, NotReady, Unauthorized
from .lifecycle import Lifecycle
from .models import (
    ClusterRecord,
    ClusterTarget,
    Heartbeat,
    HeartbeatRecord,
    InstanceCredential,
    InstanceRole,
)
from .ports import Ports
from .spot import note_interruptions
from .watchdog import steady_heartbeat

# The blob holding a cluster's ``request.secrets``: their JSON, sealed by the secret box.
ENVIRON_SECRETS = "environ-secrets"
# The token the scheduler's dashboard asks for (``billow.dashboard``), sealed like the keys.
DASHBOARD_TOKEN = "dashboard-token"


def unseal(ports: Ports, cluster_id: str, name: str) -> str:
    """A secret blob of the cluster, decrypted. Raises ``NotFound`` when it is missing."""
    blob = ports.store.get_secret(cluster_id, name)
    if blob is None:
        raise NotFound(f"cluster {cluster_id} has no secret {name}")
    return ports.secrets.decrypt(blob).decode()


class ClusterAgents:
    """What agents and scheduler plugins call, over the ports of one runtime."""

    def __init__(self, ports: Ports, lifecycle: Lifecycle) -> None:
        self.ports = ports
        self.lifecycle = lifecycle

    def kit(self, instance_token: str | None) -> dict[str, Any]:
        """What a bare instance downloads to start the agent: a uv binary per machine and
        the billow wheel to bootstrap with, as pre-signed object-store URLs with their
        sha256 (the instance checks them), and the Python to create its venv with.

        The wheel is the cluster's own billow wheel when its ``software`` pins billow as
        a wheel (the agent then matches the client's billow), else the deployment's
        agent wheel (``agent_wheel``). Authenticated by the one-time instance token, which
        is *not* consumed: the agent trades it on ``bootstrap`` next.
        """
        cred = self._instance_credential(instance_token)
        record = self.ports.store.get_cluster(cred.cluster_id)
        if record is None or record.target != ClusterTarget.running:
            raise Conflict("cluster is stopping; instance should exit")
        settings = self.ports.settings
        objects = self.ports.objects
        if objects is None or not settings.uv_sha256:
            raise Conflict(
                "this deployment has no instance kit: it needs an object store "
                "(BILLOW_ENV_BUCKET on AWS, BILLOW_GCS_BUCKET on GCP) holding uv "
                "(BILLOW_UV_SHA256); run scripts/upload-instance-kit.sh (AWS) or the "
                "README's 'gcloud storage cp' step (GCP)"
            )
        software = record.request.software
        own = next((w for w in software.wheels() if w.name == "billow"), None) if software else None
        pip_args: list[str] = []
        if own is not None:
            wheel_sha256, filename = str(own.sha256), str(own.filename)
            assert software is not None
            if software.index_url:
                pip_args += ["--index-url", software.index_url]
            for url in software.extra_index_urls:
                pip_args += ["--extra-index-url", url]
        elif settings.agent_wheel:
            wheel_sha256, _, filename = settings.agent_wheel.partition("/")
        else:
            raise Conflict(
                "this deployment has no agent wheel (BILLOW_AGENT_WHEEL) and the cluster's "
                "software does not pin billow as a wheel; run scripts/upload-instance-kit.sh"
            )
        return {
            "uv": {
                machine: {"sha256": sha, "url": objects.download_url(sha)}
                for machine, sha in sorted(settings.uv_sha256.items())
            },
            "wheel": {
                "sha256": wheel_sha256,
                "filename": filename,
                "url": objects.download_url(wheel_sha256),
            },
            "pip_args": pip_args,
            # uv finds, or downloads, a Python for the bootstrap venv: the client's
            # major.minor when the cluster runs the client's software, else any 3.11+.
            "python": software.python_minor if software else ">=3.11",
        }

    def bootstrap(self, instance_token: str | None) -> dict[str, Any]:
        """Exchange a one-time instance token for the instance's config and certificates.

        Workers get ``NotReady`` (token not consumed) until the scheduler reported its
        address, unless the provider fixed that address at launch (their credential
        names it). The scheduler also gets a fresh cluster token for its heartbeats. The
        config's ``environ`` holds the cluster's secrets, unsealed, besides its environ:
        this answer is the one way their values leave the control plane.
        """
        cred = self._instance_credential(instance_token)
        token_hash = hash_token(str(instance_token))
        now = self.ports.clock.now()
        record = self.ports.store.get_cluster(cred.cluster_id)
        if record is None or record.target != ClusterTarget.running:
            raise Conflict("cluster is stopping; instance should exit")
        beat = self.ports.store.get_heartbeat(record.id)
        scheduler_address = beat.heartbeat.scheduler_address if beat else cred.scheduler_address
        if cred.role == InstanceRole.worker and scheduler_address is None:
            raise NotReady(
                "scheduler has not reported its address yet",
                retry_after=self.ports.settings.poll_interval,
            )
        if self.ports.store.consume_instance_credential(token_hash, now) is None:
            raise Unauthorized("instance token is unknown, used or expired")
        role = cred.role.value
        request = record.request
        config: dict[str, Any] = {
            "cluster_id": record.id,
            "cluster_name": record.name,
            "name": cred.instance_name,
            "role": role,
            "ca_cert": unseal(self.ports, record.id, "ca.pem"),
            "cert": unseal(self.ports, record.id, f"{role}.pem"),
            "key": unseal(self.ports, record.id, f"{role}.key"),
            "environ": {**request.environ, **self._environ_secrets(record)},
            "nthreads": request.worker_cpu,
            "memory_limit": request.worker_memory,
            "heartbeat_interval": self.ports.settings.heartbeat_interval,
        }
        if request.software is not None:
            config["software"] = request.software.model_dump(mode="json")
            objects = self.ports.objects
            config["wheel_urls"] = {
                str(w.sha256): objects.download_url(str(w.sha256))
                for w in request.software.wheels()
                if objects is not None
            }
        if cred.role == InstanceRole.scheduler:
            cluster_token = new_token(CLUSTER_TOKEN_PREFIX)
            self.ports.store.put_cluster_token(record.id, hash_token(cluster_token))
            config["cluster_token"] = cluster_token
            config["analytics"] = request.analytics
            config["gpu_threshold"] = self.ports.settings.gpu_utilization_threshold
            config["dashboard_token"] = self.dashboard_token(record)
        else:  # connects at once; Dask retries until the scheduler listens
            config["scheduler_address"] = scheduler_address
        return config

    def heartbeat(self, cluster_id: str, cluster_token: str | None, beat: Heartbeat) -> dict:
        """Record the scheduler's report; wakes the orchestrator while the cluster converges.

        Returns ``target`` (so the scheduler learns when it should shut down), ``status``,
        and ``next_heartbeat``: the seconds after which the scheduler reports again if
        nothing changes, ``heartbeat_interval`` until the cluster has converged, then
        ``watchdog.steady_heartbeat`` (the scheduler also reports at once on news).
        """
        record = self.ports.store.get_cluster(cluster_id)
        stored_hash = self.ports.store.get_cluster_token(cluster_id) if record else None
        if (
            record is None
            or not cluster_token
            or not same_hash(stored_hash, hash_token(cluster_token))
        ):
            raise Unauthorized("invalid cluster token")
        stored = HeartbeatRecord(
            cluster_id=cluster_id, received_at=self.ports.clock.now(), heartbeat=beat
        )
        self.ports.store.put_heartbeat(stored)
        if beat.spot_interrupted:
            record = note_interruptions(self.ports, record, beat)
        record = self.lifecycle.observe(record, stored)
        settings = self.ports.settings
        next_heartbeat = steady_heartbeat(record, settings)
        if record.active and not converged(record, stored):
            self.ports.orchestrator.submit(cluster_id)
            next_heartbeat = settings.heartbeat_interval
        return {
            "target": record.target.value,
            "status": record.status.value,
            "next_heartbeat": next_heartbeat,
        }

    def dashboard_token(self, record: ClusterRecord) -> str | None:
        """The cluster's dashboard token; ``None`` for a cluster created without one."""
        try:
            return unseal(self.ports, record.id, DASHBOARD_TOKEN)
        except NotFound:
            return None

    # -- helpers ---------------------------------------------------------------------

    def _instance_credential(self, instance_token: str | None) -> InstanceCredential:
        """The credential of a live one-time instance token, without consuming it."""
        if not instance_token:
            raise Unauthorized("missing instance token")
        cred = self.ports.store.peek_instance_credential(hash_token(instance_token))
        if cred is None or cred.used or cred.expired(self.ports.clock.now()):
            raise Unauthorized("instance token is unknown, used or expired")
        return cred

    def _environ_secrets(self, record: ClusterRecord) -> dict[str, str]:
        """The cluster's secrets by name, unsealed (no read when it has none)."""
        if not record.secrets:
            return {}
        return dict(json.loads(unseal(self.ports, record.id, ENVIRON_SECRETS)))
