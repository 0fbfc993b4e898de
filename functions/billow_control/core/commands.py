"""Commands from the deployment's event bus (EventBridge, Pub/Sub): stop or scale a
cluster as a named user.

An envelope (``detail-type`` ``billow.command``, the sending account or project, and a
``detail``) carries one ``Command``::

    {"action": "stop" | "scale", "cluster_id": "c-...", "user_id": "u-...",
     "n_workers": 3,            # scale only
     "reason": "nightly-stop"}  # stop only, optional: the stop reason users see

It is carried out *as* ``user_id``, with that user's rights: the owner of the cluster,
or an admin (admins may stop or scale anyone's cluster, other users get "not found").
Nothing in a message proves who wrote it, so the trust boundary is the bus's IAM: whoever
may publish to the deployment's bus may act as any named user for stop and scale (never
create, credentials or logs). Messages from another account or project are refused.

Refused commands (not a command, foreign origin, bad fields, unknown user, not allowed)
are logged and answered ``{"ok": False, "error", "message"}`` without raising, so the bus
does not redeliver them; infrastructure errors raise, so it does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ApiError, describe_validation_errors
from .models import ScaleRequest, WorkerCount

if TYPE_CHECKING:
    from .service import ControlPlane

log = logging.getLogger(__name__)

COMMAND_DETAIL_TYPE = "billow.command"


class Command(BaseModel):
    """One ``billow.command`` detail. Unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["stop", "scale"]
    cluster_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=64)
    n_workers: WorkerCount | None = Field(default=None, description="scale only")
    reason: str = Field(
        default="command",
        pattern=r"^[a-z0-9][a-z0-9-]{0,31}$",
        description="stop only: the stop reason users see (1-32 lower-case letters, "
        "digits, dashes)",
    )

    @model_validator(mode="after")
    def _scale_needs_a_count(self) -> Command:
        if self.action == "scale" and self.n_workers is None:
            raise ValueError("n_workers is required to scale")
        return self


class Envelope(BaseModel):
    """Where a command came from, as the runtime's entry point read it off its bus."""

    id: str | None = None
    kind: str | None = Field(default=None, description="EventBridge detail-type")
    source: str | None = None
    origin: str | None = Field(default=None, description="sending account or project")
    detail: Any = None


def refused(envelope: Envelope, code: str, message: str) -> dict[str, Any]:
    log.warning(
        "refused command", extra={"event_id": envelope.id, "error": code, "reason": message}
    )
    return {"ok": False, "error": code, "message": message}


def carry_out(
    plane: Callable[[], ControlPlane], envelope: Envelope, own_origin: str | None
) -> dict[str, Any]:
    """Check ``envelope`` and carry out its command as the user it names.

    ``own_origin`` is this deployment's account or project (``None``: not known, no
    check). ``plane`` is called only once the command is well-formed, so a malformed
    message costs no runtime. Returns ``{"ok": True, "cluster": {...}}`` or a refusal
    (see the module docstring); raises only on infrastructure errors.
    """
    if envelope.kind != COMMAND_DETAIL_TYPE:
        return refused(envelope, "not-a-command", f"detail-type must be {COMMAND_DETAIL_TYPE!r}")
    if own_origin is not None and envelope.origin != own_origin:
        return refused(envelope, "foreign-account", "commands are accepted from this account only")
    if not isinstance(envelope.detail, Mapping):
        return refused(envelope, "invalid", "detail must be an object")
    try:
        command = Command.model_validate(envelope.detail)
    except ValidationError as e:
        message, _ = describe_validation_errors([dict(error) for error in e.errors()])
        return refused(envelope, "invalid", message)
    log.info(
        "command",
        extra={
            "event_id": envelope.id,
            "source": envelope.source,
            "account": envelope.origin,
            "user_id": command.user_id,
            "cluster_id": command.cluster_id,
            "action": command.action,
        },
    )
    control = plane()
    user = control.ports.store.get_user(command.user_id)
    if user is None or user.disabled:
        return refused(envelope, "unknown-user", f"no user {command.user_id!r}")
    try:
        if command.action == "stop":
            cluster = control.stop_cluster(user, command.cluster_id, reason=command.reason)
        else:
            scale = ScaleRequest(n_workers=command.n_workers or 0)  # validated: not None
            cluster = control.scale_cluster(user, command.cluster_id, scale)
    except ApiError as e:
        return refused(envelope, e.code, e.message)
    keys = ("id", "status", "target", "desired_workers")
    return {"ok": True, "cluster": {k: cluster.get(k) for k in keys}}
