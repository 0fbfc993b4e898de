"""Software use cases: where clients upload wheels, named and versioned environments,
and the check every spec passes before a cluster or an environment is written.

Owner scoping is the clusters': an environment is its owner's alone (admins included),
and another tenant's answers exactly as a missing one.
"""

from __future__ import annotations

import re
from typing import Any

from . import access
from .access import Action
from .errors import Conflict, Invalid, NotFound
from .models import ClusterRequest, User
from .ports import Ports, StaleRecordError
from .software import NAME_PATTERN, SoftwareEnvironment, SoftwareSpec, UploadFile


class SoftwareCatalog:
    """Uploads and named environments over the ports of one runtime."""

    def __init__(self, ports: Ports) -> None:
        self.ports = ports

    def resolve(self, user: User, request: ClusterRequest) -> tuple[ClusterRequest, str | None]:
        """The request with the spec of the software environment it names copied into
        ``software`` (so later revisions never change the cluster), and that revision's
        ``name:revision``; the request as is when it names none. Only the caller's own
        environments count: another tenant's is as unknown as a missing one (422). The
        spec is checked (``check``) before anything is written."""
        ref = request.software_environment
        if ref is None:
            if request.software is not None:
                self.check(request.software, "software")
            return request, None
        name, _, revision = ref.partition(":")
        env = self.ports.store.get_environment(user.id, name, int(revision) if revision else None)
        if env is None:
            raise Invalid(
                f"no software environment {ref!r} of yours; list yours with `billow env "
                f"list`, or create it with `billow env create {name} ...`",
                field="software_environment",
            )
        self.check(env.spec, "software_environment")
        resolved = request.model_copy(update={"software": env.spec, "software_environment": None})
        return resolved, env.ref

    def check(self, software: SoftwareSpec, field: str = "software") -> None:
        """Refuse, before anything is written, a spec that lacks the agent's packages or
        whose wheels were not uploaded; ``Invalid`` names ``field``."""
        absent = [name for name in ("billow", "distributed") if software.version_of(name) is None]
        if absent:
            raise Invalid(
                f"the environment lacks {' and '.join(absent)}: every instance runs the "
                "Billow agent and Dask from it",
                field=field,
            )
        wheels = software.wheels()
        if not wheels:
            return
        objects = self.ports.objects
        if objects is None:
            raise Invalid(
                "this deployment has no object store, so it cannot run local code; "
                "sync only packages from an index (package_sync_ignore=[...])",
                field=field,
            )
        missing = [f"{w.name} ({w.filename})" for w in wheels if not objects.exists(str(w.sha256))]
        if missing:
            raise Invalid(
                f"wheels not uploaded: {', '.join(missing)}; upload them first "
                "(POST /v1/software/uploads)",
                field=field,
            )

    def uploads(self, user: User, files: list[UploadFile]) -> dict[str, Any]:
        """Where to ``PUT`` each wheel the caller wants to use: a pre-signed URL and the
        headers the ``PUT`` must carry, or ``present`` when the store has it already
        (wheels are named by their sha256, so an object's content is the same whoever
        uploaded it). Any user whose role may create clusters may upload."""
        access.require(user, Action.write_software)
        objects = self.ports.objects
        if objects is None:
            raise Invalid("this deployment has no object store for wheels", field="files")
        answers = []
        for f in files:
            if objects.exists(f.sha256):
                answers.append({"sha256": f.sha256, "present": True})
            else:
                url = objects.upload_url(f.sha256, f.size)
                headers = objects.upload_headers(f.sha256, f.size)
                answers.append(
                    {"sha256": f.sha256, "present": False, "url": url, "headers": headers}
                )
        return {"uploads": answers}

    # -- named environments ------------------------------------------------------------

    def create_environment(
        self, user: User, name: str, spec: SoftwareSpec
    ) -> tuple[dict[str, Any], bool]:
        """Store ``spec`` as the next revision of the caller's environment ``name``.

        Returns ``(environment, created)``: a spec equal to the latest revision's (same
        ``SoftwareSpec.key``) makes no new revision and answers that one with
        ``created=False``. Raises ``Invalid`` for a bad name, a spec lacking the agent's
        packages or naming wheels the object store does not have, and ``Conflict`` when
        concurrent writers kept winning.
        """
        access.require(user, Action.write_software)
        name = self._environment_name(name)
        self.check(spec, "spec")
        store = self.ports.store
        latest = store.get_environment(user.id, name)
        if latest is not None and latest.spec_key == spec.key:
            return latest.public(), False
        now = self.ports.clock.now()
        try:
            revision = store.put_environment_revision(user.id, name, spec, now)
        except StaleRecordError:
            raise Conflict(f"environment {name!r} is changing too quickly; try again") from None
        env = SoftwareEnvironment.revision_of(user.id, name, revision, spec, now)
        return env.public(), True

    def get_environment(self, user: User, name: str, revision: int | None = None) -> dict[str, Any]:
        """The caller's environment ``name`` (latest revision, or ``revision``), spec
        included. Raises ``NotFound`` for a missing one, another tenant's included."""
        access.require(user, Action.read_software)
        if revision is not None and revision < 1:
            raise Invalid("revision must be 1 or more", field="revision")
        env = self.ports.store.get_environment(user.id, self._environment_name(name), revision)
        if env is None:
            at = f" at revision {revision}" if revision is not None else ""
            raise NotFound(f"no software environment {name!r}{at}", field="name")
        return env.public()

    def list_environments(self, user: User) -> list[dict[str, Any]]:
        """The latest revision of each of the caller's environments (admins included: an
        environment is its owner's), by name, without their package lists."""
        access.require(user, Action.read_software)
        return [
            env.public(include_spec=False) for env in self.ports.store.list_environments(user.id)
        ]

    def delete_environment(self, user: User, name: str) -> dict[str, Any]:
        """Delete every revision of the caller's environment ``name``; clusters started
        from it keep their copy of the spec. Raises ``NotFound`` for a missing one."""
        access.require(user, Action.write_software)
        try:
            deleted = self.ports.store.delete_environment(user.id, self._environment_name(name))
        except StaleRecordError:
            raise Conflict(f"environment {name!r} is changing too quickly; try again") from None
        if not deleted:
            raise NotFound(f"no software environment {name!r}", field="name")
        return {"name": name, "deleted": True}

    @staticmethod
    def _environment_name(name: str) -> str:
        if not re.match(NAME_PATTERN, name):
            raise Invalid(
                "an environment name is lower-case letters, digits and dashes, starting "
                "with a letter or digit, at most 63 characters",
                field="name",
            )
        return name
