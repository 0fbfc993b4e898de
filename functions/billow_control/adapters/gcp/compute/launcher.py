"""Starting instances: one ``instances.bulkInsert`` of count 1 per Billow instance, from
the cluster's instance template.

The template (``billow-<cluster id>``, global) holds what the cluster's instances share:
image and disk, network, network tags, service account, cluster labels. Each bulkInsert
overrides, per instance (JSON merge patch over the template): its machine type, labels,
``startup-script`` (so the one-time token never lands in a shared template), scheduling
(``SPOT`` or ``STANDARD``) and accelerators. Requests carry a ``requestId`` derived from
the instance's ``client_token`` and the capacity kind, so a retried request returns the
first one's operation instead of a second instance; and the instance's name is derived
from the cluster and instance names, so even a fresh request cannot make a second one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from ....core import tags as billow_tags
from ....core.models import InstanceInfo, InstanceRole, InstanceSpec, InstanceState
from .instances import InstanceReader, instance_info, instance_name
from .labels import BILLOW_LABELS, labels_of_tags
from .machine_types import Choice, MachineTypeCatalog, choose
from .network import OPERATION_TIMEOUT, Firewalls, cluster_tag, deployment_tag
from .settings import GceSettings
from .startup_script import render

log = logging.getLogger(__name__)

# Operation error codes meaning "no capacity of this kind here now": spot_with_fallback
# tries standard capacity after those; anything else (bad image, quota...) is raised.
CAPACITY_ERRORS = frozenset(
    {
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "RESOURCE_POOL_EXHAUSTED",
    }
)
_ATTEMPTS = {
    "spot": ["SPOT"],
    "standard": ["STANDARD"],
    "spot_with_fallback": ["SPOT", "STANDARD"],
}
LOGGING_SCOPE = "https://www.googleapis.com/auth/logging.write"


class GceLaunchError(RuntimeError):
    """No instance was started (no capacity, quota, bad image...). Nothing was left
    running; retrying the same spec later is safe. ``codes`` are the operation's codes."""

    def __init__(self, message: str, codes: list[str]):
        super().__init__(message)
        self.codes = codes


def request_id(value: str, purpose: str) -> str:
    """A stable Compute Engine ``requestId`` (a non-zero UUID) for ``value``."""
    digest = hashlib.sha256(f"{purpose}\0{value}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def template_name(cluster_id: str) -> str:
    return f"billow-{cluster_id}"[:63].rstrip("-")


class Launcher:
    """Starts one instance per ``InstanceSpec``; see ``launch``."""

    def __init__(
        self,
        instances: Any,
        templates: Any,
        reader: InstanceReader,
        firewalls: Firewalls,
        catalog: MachineTypeCatalog,
        settings: GceSettings,
    ) -> None:
        self.instances = instances
        self.templates = templates
        self.reader = reader
        self.firewalls = firewalls
        self.catalog = catalog
        self.settings = settings

    def choice(self, spec: InstanceSpec) -> Choice:
        """The machine type for ``spec`` (raises ``MachineTypeError`` naming the field)."""
        s = self.settings
        return choose(
            self.catalog.types(s.zone),
            cpu=spec.cpu,
            memory=spec.memory,
            role=spec.role,
            families=s.machine_families,
            gpu=s.worker_gpu if spec.role == InstanceRole.worker else None,
            zone=s.zone,
        )

    def launch(self, spec: InstanceSpec) -> InstanceInfo:
        """Start ``spec``, or return the instance of the deployment already called
        ``instance_name(cluster, name)`` (any state).

        ``purchase`` picks spot, standard, or spot first and standard when the zone
        reports no spot capacity.

        Raises
        ------
        GceLaunchError
            No instance started.
        MachineTypeError
            No machine type fits the cpu, memory and GPU asked for (retrying cannot help).
        ValueError
            The spec cannot be turned into labels or a startup script.
        google.api_core.exceptions.GoogleAPICallError
            Any other failure; retrying the same spec is safe.
        """
        name = instance_name(spec.cluster_id, spec.name)
        existing = self.reader.get(name)
        if existing is not None:
            info = instance_info(existing)
            if info is not None:
                return info
        s = self.settings
        tags = {
            **spec.tags,
            billow_tags.CLUSTER: spec.cluster_id,
            billow_tags.DEPLOYMENT: s.deployment,
            billow_tags.INSTANCE_NAME: spec.name,
            billow_tags.ROLE: spec.role.value,
        }
        labels = labels_of_tags(tags)
        script = render(spec.environment, s)
        choice = self.choice(spec)
        self.firewalls.ensure(spec.cluster_id)
        template = self._ensure_template(spec.cluster_id, labels, choice)
        codes: list[str] = []
        messages: list[str] = []
        for model in _ATTEMPTS[s.purchase]:
            resource = _bulk_resource(name, template, labels, script, choice, model)
            try:
                self.instances.bulk_insert(
                    request=compute_v1.BulkInsertInstanceRequest(
                        project=s.project,
                        zone=s.zone,
                        bulk_insert_instance_resource_resource=resource,
                        request_id=request_id(spec.client_token, model),
                    )
                ).result(timeout=OPERATION_TIMEOUT)
            except gexc.GoogleAPICallError as e:  # refused at once, or the operation failed
                found = error_codes(e)
                if "RESOURCE_ALREADY_EXISTS" in found or isinstance(e, gexc.Conflict):
                    started = self.reader.get(name)
                    info = instance_info(started) if started is not None else None
                    if info is not None:
                        return info
                codes += found
                messages.append(f"{model}: {e.message}")
                if found and all(c in CAPACITY_ERRORS for c in found):
                    continue
                break
            log.info("launched %s %s as %s (%s)", spec.cluster_id, spec.name, name, model)
            return InstanceInfo(
                id=name,
                cluster_id=spec.cluster_id,
                name=spec.name,
                role=spec.role,
                state=InstanceState.pending,
                tags=tags,
                launched_at=datetime.now(UTC),
            )
        raise GceLaunchError(
            f"could not start {spec.name} of cluster {spec.cluster_id} ({s.purchase}): "
            + "; ".join(messages),
            codes,
        )

    def _ensure_template(self, cluster_id: str, labels: dict[str, str], choice: Choice) -> str:
        """The URL of the cluster's instance template, created if missing."""
        s = self.settings
        name = template_name(cluster_id)
        url = f"projects/{s.project}/global/instanceTemplates/{name}"
        with contextlib.suppress(gexc.NotFound):
            self.templates.get(project=s.project, instance_template=name)
            return url
        per_instance = {BILLOW_LABELS[billow_tags.INSTANCE_NAME], BILLOW_LABELS[billow_tags.ROLE]}
        shared = {k: v for k, v in labels.items() if k not in per_instance}
        interface = compute_v1.NetworkInterface(
            network=s.network,
            access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")],
        )
        if s.subnetwork:
            interface.subnetwork = s.subnetwork
        properties = compute_v1.InstanceProperties(
            machine_type=choice.machine_type,
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=s.image, disk_size_gb=s.disk_gb, labels=shared
                    ),
                )
            ],
            network_interfaces=[interface],
            tags=compute_v1.Tags(items=[deployment_tag(s.deployment), cluster_tag(cluster_id)]),
            labels=shared,
            metadata=compute_v1.Metadata(
                items=[compute_v1.Items(key="block-project-ssh-keys", value="true")]
            ),
        )
        if s.service_account:
            properties.service_accounts = [
                compute_v1.ServiceAccount(email=s.service_account, scopes=[LOGGING_SCOPE])
            ]
        template = compute_v1.InstanceTemplate(
            name=name,
            description=f"Billow cluster {cluster_id} of deployment {s.deployment}",
            properties=properties,
        )
        try:
            self.templates.insert(
                request=compute_v1.InsertInstanceTemplateRequest(
                    project=s.project,
                    instance_template_resource=template,
                    request_id=request_id(cluster_id, "instance-template"),
                )
            ).result(timeout=OPERATION_TIMEOUT)
            log.info("created instance template %s", name)
        except gexc.Conflict:
            pass  # created concurrently
        return url


def _bulk_resource(
    name: str, template: str, labels: dict[str, str], script: str, choice: Choice, model: str
) -> compute_v1.BulkInsertInstanceResource:
    scheduling = compute_v1.Scheduling(provisioning_model=model)
    if model == "SPOT":
        # STOP, not DELETE: a preempted instance stays listed as terminated, so the
        # lifecycle sees it went away; terminate and the sweep delete it.
        scheduling.instance_termination_action = "STOP"
    if choice.attach:
        scheduling.on_host_maintenance = "TERMINATE"  # GPUs cannot live-migrate
    properties = compute_v1.InstanceProperties(
        machine_type=choice.machine_type,
        labels=labels,
        metadata=compute_v1.Metadata(
            items=[
                compute_v1.Items(key="block-project-ssh-keys", value="true"),
                compute_v1.Items(key="startup-script", value=script),
            ]
        ),
        scheduling=scheduling,
        guest_accelerators=[
            compute_v1.AcceleratorConfig(accelerator_type=kind, accelerator_count=count)
            for kind, count in choice.attach
        ],
    )
    return compute_v1.BulkInsertInstanceResource(
        count=1,
        min_count=1,
        source_instance_template=template,
        per_instance_properties={
            name: compute_v1.BulkInsertInstanceResourcePerInstanceProperties(name=name)
        },
        instance_properties=properties,
    )


def error_codes(error: gexc.GoogleAPICallError) -> list[str]:
    """Compute Engine's error codes of a refusal: the ``code`` of each error of a failed
    operation, or the ``reason`` of each error of an HTTP error answer."""
    codes = []
    for item in error.errors or []:
        code = item.get("reason") if isinstance(item, dict) else getattr(item, "code", None)
        if code:
            codes.append(str(code))
    return codes
