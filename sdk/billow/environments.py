"""Named, versioned software environments, as Coiled users know them.

```python
billow.create_software_environment("etl", pip=["pandas==2.2.3", "pyarrow"], python="3.11")
cluster = billow.Cluster(n_workers=4, software="etl")
```

The client resolves the requirements (``billow.software.resolve``: ``uv pip compile`` for
the cluster's Python and platform, plus the client's Dask core packages and Billow), and
the control plane stores the locked spec as the next revision of the name. A cluster
started with ``software="etl"`` (or ``"etl:3"``) runs that revision's spec; the client
checks it against its own versions before anything is created.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from . import config
from .api import ControlPlaneClient

# billow_control (pydantic) is imported by the functions that need it: ``import billow``
# stays as light as it was.
T = TypeVar("T")


async def acreate_software_environment(
    name: str,
    pip: Iterable[str] | str | None = None,
    requirements: str | os.PathLike[str] | None = None,
    uv_lock: str | os.PathLike[str] | None = None,
    python: str | None = None,
    server: str | None = None,
    token: str | None = None,
    *,
    platform: str = "linux-x86_64",
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """The ``async`` form of ``create_software_environment``."""
    from rich.console import Console

    from billow_control.core.software import NAME_PATTERN

    from .software.resolve import resolve_requirements

    if not re.match(NAME_PATTERN, name):
        raise ValueError(
            f"{name!r} is not an environment name: lower-case letters, digits and dashes, "
            "starting with a letter or digit, at most 63 characters"
        )
    lines = [pip] if isinstance(pip, str) else list(pip or ())
    show = config.get("show-progress", True) if show_progress is None else show_progress
    console = Console(stderr=True)

    def report(line: str) -> None:
        if show:
            console.print(line, highlight=False, markup=False)

    async with ControlPlaneClient(server, token) as api:
        await api.request("GET", "/v1/whoami")  # a bad token or URL fails before resolving
        with tempfile.TemporaryDirectory(prefix="billow-wheels-") as wheel_dir:
            resolved = await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: resolve_requirements(
                    lines,
                    requirements,
                    uv_lock,
                    python=python,
                    platform=platform,
                    wheel_dir=Path(wheel_dir),
                    report=report,
                ),
            )
            for notice in resolved.notices:
                report(f"  notice: {notice}")
            if resolved.wheels:
                uploaded, present = await api.upload_wheels(
                    [(w.path, w.sha256) for w in resolved.wheels]
                )
                report(f"uploaded {uploaded} wheel(s), {present} already stored")
        return await api.create_environment(name, resolved.spec.model_dump(mode="json"))


def create_software_environment(
    name: str,
    pip: Iterable[str] | str | None = None,
    requirements: str | os.PathLike[str] | None = None,
    uv_lock: str | os.PathLike[str] | None = None,
    python: str | None = None,
    server: str | None = None,
    token: str | None = None,
    *,
    platform: str = "linux-x86_64",
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Resolve requirements on this client and store them as a new revision of ``name``.

    Parameters
    ----------
    name : str
        Lower-case letters, digits and dashes (at most 63), unique among yours.
    pip : list of str, optional
        Requirement lines, e.g. ``["pandas==2.2.3", "pyarrow"]``.
    requirements : path, optional
        A requirements file.
    uv_lock : path, optional
        A ``uv.lock`` (or its project directory): its locked dependencies, less the
        project itself and its dev dependencies.
    python : str, optional
        The cluster's Python, e.g. ``"3.11"``; default this client's. A client can only
        use an environment of its own Python major.minor.
    server, token : str, optional
        Control plane URL and API token; default to config and the login file.
    platform : str
        The cluster's platform (``linux-x86_64`` or ``linux-aarch64``).

    Every environment also gets this client's exact versions of Dask's core packages
    (dask, distributed, cloudpickle, msgpack, tornado, toolz) and Billow (a local
    checkout is built into a wheel and uploaded). The same spec as the latest revision
    makes no new revision.

    Returns
    -------
    dict
        The stored revision: ``name``, ``revision``, ``created_at``, ``spec_key``,
        ``python``, ``platform``, ``n_packages``, the ``spec``, and ``created`` (false
        when the latest revision already had this spec).

    Raises
    ------
    billow.errors.ResolutionError
        uv could not resolve the requirements; names the packages, quotes uv's output.
    billow.errors.ValidationError
        The control plane refused the name or the spec (``.field`` says which).
    ValueError
        A bad name, Python version or platform, or a missing file.
    """
    return _sync(
        acreate_software_environment(
            name,
            pip,
            requirements,
            uv_lock,
            python,
            server,
            token,
            platform=platform,
            show_progress=show_progress,
        )
    )


def get_software_environment(
    name: str, revision: int | None = None, server: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """One of your environments with its spec: the latest revision, or ``revision``.

    Raises ``billow.errors.SoftwareEnvironmentNotFound`` when you have none of that name.
    """

    async def get() -> dict[str, Any]:
        async with ControlPlaneClient(server, token) as api:
            return await api.get_environment(name, revision)

    return _sync(get())


def list_software_environments(
    server: str | None = None, token: str | None = None
) -> list[dict[str, Any]]:
    """The latest revision of each of your environments (without package lists), by name."""

    async def get() -> list[dict[str, Any]]:
        async with ControlPlaneClient(server, token) as api:
            return await api.list_environments()

    return _sync(get())


def list_instance_types(
    cores: int | None = None,
    memory: str | None = None,
    arch: str | None = None,
    gpu: int | None = None,
    server: str | None = None,
    token: str | None = None,
) -> list[dict[str, Any]]:
    """Machine types of the deployment's region with at least ``cores`` vCPUs and
    ``memory`` (``"8 GiB"``) on ``arch`` (``"x86_64"``, ``"arm64"``), with ``gpu`` GPUs
    (0: none), smallest first: what ``worker_vm_types`` may name. Asked of the control
    plane, which knows the region (and its account) and chooses from the same list."""
    params = {"cores": cores, "memory": memory, "arch": arch, "gpu": gpu}

    async def get() -> list[dict[str, Any]]:
        async with ControlPlaneClient(server, token) as api:
            query = {k: v for k, v in params.items() if v is not None}
            found = await api.request("GET", "/v1/instance-types", params=query)
            return list(found["instance_types"])

    return _sync(get())


def delete_software_environment(
    name: str, server: str | None = None, token: str | None = None
) -> None:
    """Delete every revision of your environment ``name``; clusters already started from
    it keep running their copy. Raises ``SoftwareEnvironmentNotFound`` when absent."""

    async def delete() -> None:
        async with ControlPlaneClient(server, token) as api:
            await api.delete_environment(name)

    _sync(delete())


async def pin_environment(api: ControlPlaneClient, ref: str) -> str:
    """``name:revision`` of the environment ``ref`` (``etl`` or ``etl:3``) names, once
    its spec passed the version-skew check against this client.

    Raises
    ------
    ValueError
        ``ref`` is not a name, or ``name:revision``.
    billow.errors.SoftwareEnvironmentNotFound
        You have no such environment (or revision).
    billow.errors.VersionMismatchError
        Its Python major.minor or a Dask core package differs from this client's.
    """
    from billow_control.core.models import ENVIRONMENT_REF_PATTERN
    from billow_control.core.software import SoftwareSpec

    from .software.scan import python_version
    from .software.skew import check_versions, client_versions

    if not re.match(ENVIRONMENT_REF_PATTERN, ref):
        raise ValueError(f"software={ref!r} is not an environment name or 'name:revision'")
    name, _, revision = ref.partition(":")
    env = await api.get_environment(name, int(revision) if revision else None)
    spec = SoftwareSpec.model_validate(env["spec"])
    check_versions(client_versions(), spec, python_version())
    return f"{env['name']}:{env['revision']}"


def _sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion, also from inside a running event loop (Jupyter), where
    it runs on a fresh loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
