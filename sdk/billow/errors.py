"""Exceptions the SDK raises. Each carries the server's message verbatim."""

from __future__ import annotations


class BillowError(Exception):
    """Base class of every Billow SDK error."""


class NotLoggedIn(BillowError):
    """No control-plane URL or token could be found."""


class BillowAPIError(BillowError):
    """The control plane answered with an error status.

    ``status`` is the HTTP status, ``code`` a stable error name (``invalid``,
    ``not-found``, ``unauthorized``...), ``field`` the offending field when one is known.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        detail: list | None = None,
    ) -> None:
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.detail = detail or []


class ValidationError(BillowAPIError):
    """The request was rejected as invalid (HTTP 422)."""


class AuthenticationError(BillowAPIError):
    """The token is missing or wrong (HTTP 401)."""


class PermissionDenied(BillowAPIError):
    """Your role or your token's scope does not allow this (HTTP 403)."""


class QuotaExceeded(PermissionDenied):
    """Over a quota limit (HTTP 403 ``quota-exceeded``); the message names the limit,
    what was asked and what is in use."""


class ClusterNotFound(BillowAPIError):
    """No such cluster, or not yours (HTTP 404)."""


class SoftwareEnvironmentNotFound(BillowAPIError):
    """No software environment of yours has that name (or revision) (HTTP 404)."""


class ResolutionError(BillowError):
    """The requirements of a software environment could not be resolved (or exported).

    ``packages`` names the distributions uv's output mentions (first mention first);
    ``output`` holds uv's own error text, which the message quotes.
    """

    def __init__(self, message: str, packages: list[str] | None = None, output: str = "") -> None:
        self.packages = list(packages or [])
        self.output = output
        text = message
        if self.packages:
            text += f"\npackages involved: {', '.join(self.packages)}"
        if output.strip():
            text += "\n" + output.rstrip()
        super().__init__(text)


class ClusterStartError(BillowError):
    """The cluster failed to start. ``logs`` holds the last lines of the failing instance."""

    def __init__(
        self, message: str, logs: list[str] | None = None, reason: str | None = None
    ) -> None:
        self.logs = logs or []
        self.reason = reason
        text = message
        if self.logs:
            text += "\n\nLast log lines of the failing instance:\n" + "\n".join(self.logs)
        super().__init__(text)


class ClusterStopped(BillowError):
    """The cluster stopped (``reason`` says why) while an operation needed it running."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class EnvironmentBuildError(BillowError):
    """An instance could not build the cluster's software environment.

    The message is written for the user (it becomes the cluster's failure message): a
    first line saying what failed, then uv's own error output or the offending package.
    """


class VersionMismatchError(BillowError):
    """The cluster's software does not match the client's where it must.

    ``mismatches`` maps ``"python"`` or a package name to ``(client, cluster)`` versions,
    ``None`` on a side that lacks the package. The message lists one per line as
    ``name: client X, cluster Y`` (``absent`` for ``None``).
    """

    def __init__(self, mismatches: dict[str, tuple[str | None, str | None]]) -> None:
        self.mismatches = dict(mismatches)
        lines = [
            f"  {name}: client {mine or 'absent'}, cluster {theirs or 'absent'}"
            for name, (mine, theirs) in self.mismatches.items()
        ]
        super().__init__(
            "the cluster's software does not match this client:\n"
            + "\n".join(lines)
            + "\nuse the same versions on both sides (rescan the environment, or pin them)"
        )


class WheelBuildError(BillowError):
    """A wheel of a local project could not be built.

    ``project`` names it; ``output`` holds the last lines of the build tool's output.
    """

    def __init__(self, project: str, message: str, output: list[str] | None = None) -> None:
        self.project = project
        self.output = output or []
        text = f"could not build a wheel of {project}: {message}"
        if self.output:
            text += "\n\nLast lines of the build output:\n" + "\n".join(self.output)
        super().__init__(text)
