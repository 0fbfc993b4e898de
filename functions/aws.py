"""Lambda entry points of the AWS control plane (``serverless.yml``: ``functions/aws.<name>``).

===================  ==========================================================================
handler              invoked by
===================  ==========================================================================
``api_handler``      the HTTP API (``ANY /v1/{proxy+}``): the shared powertools route table
``reconcile_handler`` the lifecycle state machine: ``{"cluster_id", "action": "reconcile" |
                     "fail", "generation"?, "error"?}`` -> ``{"done", "wait", "status"}``
``reaper_handler``   an EventBridge schedule, every minute
``events_handler``   ``billow.command`` events on the deployment's bus (stop, scale)
===================  ==========================================================================

Each handler is thin: parse the event, call one use case of the runtime that
``billow_control.runtimes.aws`` builds once per container, return. Importing this module
loads only the powertools logger and metrics; the runtime (boto3, pydantic, the core) is
built on the first invocation, and dask is never imported (the Lambda package carries no
dask).

Observability: JSON logs (powertools ``Logger``, correlation id = API request id or cluster
id), EMF metrics in namespace ``$POWERTOOLS_METRICS_NAMESPACE`` emitted where the events
happen (``ClustersCreated``, ``StartLatency`` in seconds, ``Failures``), and X-Ray through
the powertools ``Tracer`` when running in Lambda with tracing enabled
(``POWERTOOLS_TRACE_DISABLED`` unset or false). The tracer is created on first invocation:
it imports aws-xray-sdk, which alone costs more than the whole cold import otherwise.

Commands on the bus (``events_handler``)
----------------------------------------
An EventBridge event with ``detail-type`` ``billow.command`` and ``detail``::

    {"action": "stop" | "scale", "cluster_id": "c-...", "user_id": "u-...",
     "n_workers": 3,            # scale only
     "reason": "nightly-stop"}  # stop only, optional: the stop reason users see

is carried out *as* ``user_id``, with that user's rights: the owner of the cluster, or an
admin (admins may stop or scale anyone's cluster, other users get "not found"). Nothing
in an event proves who wrote it, so the trust boundary is IAM: whoever may
``events:PutEvents`` on the deployment's bus may act as any named user for stop and scale
(never create, credentials or logs). Grant that permission only to operators' automation.
Events from another account are refused (``account`` must be this function's own, which a
permissive bus policy could otherwise widen). Every command is logged with the event id,
source, account and user. Refused commands (unknown user, not allowed, bad fields) are
logged and answered ``{"ok": false, ...}`` without raising, so EventBridge does not retry
them; infrastructure errors raise, so it does.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

_FUNCTIONS = os.path.dirname(os.path.abspath(__file__))
for _path in (_FUNCTIONS, os.path.join(os.path.dirname(_FUNCTIONS), "sdk")):
    # In the Lambda package, billow_control lives under functions/ and the SDK under sdk/.
    if os.path.isdir(_path) and _path not in sys.path:
        sys.path.insert(0, _path)

from aws_lambda_powertools import Logger, Metrics  # noqa: E402
from aws_lambda_powertools.logging import correlation_paths  # noqa: E402
from aws_lambda_powertools.metrics import MetricUnit  # noqa: E402

if TYPE_CHECKING:
    from billow_control.core.models import ClusterRecord, ReconcileResult
    from billow_control.runtimes.aws import AwsRuntime

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "billow"
logger = Logger(service=SERVICE, utc=True)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "Billow", service=SERVICE
)

# Most invocations publish no metric: that is expected, not worth a warning on each.
warnings.filterwarnings("ignore", "No application metrics to publish", UserWarning)

COMMAND_DETAIL_TYPE = "billow.command"
_COMMAND_FIELDS = {"action", "cluster_id", "user_id", "n_workers", "reason"}
Handler = Callable[[dict, Any], Any]


# -- runtime, metrics, tracing ------------------------------------------------------------


def observe(kind: str, cluster: ClusterRecord, detail: dict | None) -> None:
    """Turn lifecycle events into metrics, at the moment the core publishes them."""
    if kind == "requested":
        metrics.add_metric(name="ClustersCreated", unit=MetricUnit.Count, value=1)
    elif kind == "ready" and cluster.ready_at is not None:
        seconds = (cluster.ready_at - cluster.created_at).total_seconds()
        metrics.add_metric(name="StartLatency", unit=MetricUnit.Seconds, value=seconds)
    elif kind == "failing":
        metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)


def runtime() -> AwsRuntime:
    """The container's runtime, built on first use."""
    from billow_control.runtimes import aws as aws_runtime

    built = aws_runtime._runtime is None
    rt = aws_runtime.get_runtime(observer=observe)
    if built:
        import logging

        from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

        logging.getLogger("billow_control")  # register the parent of the library's loggers
        copy_config_to_registered_loggers(source_logger=logger, include={"billow_control"})
    return rt


@functools.cache
def resolver() -> Any:
    """The one powertools route table (``billow_control.api.app.build_app``)."""
    from billow_control.api.app import build_app

    return build_app(lambda: runtime().plane)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _tracer_for(handler: Handler) -> Handler:
    if not os.environ.get("LAMBDA_TASK_ROOT") or _truthy(
        os.environ.get("POWERTOOLS_TRACE_DISABLED")
    ):
        return handler
    try:
        from aws_lambda_powertools import Tracer

        return Tracer(service=SERVICE, patch_modules=["botocore"]).capture_lambda_handler(handler)
    except Exception:  # aws-xray-sdk missing or broken: run untraced rather than fail
        logger.warning("X-Ray tracing unavailable", exc_info=True)
        return handler


def traced(handler: Handler) -> Handler:
    """X-Ray tracing of ``handler``, decided on its first invocation (see module docstring)."""
    chosen: list[Handler] = []

    @functools.wraps(handler)
    def wrapper(event: dict, context: Any) -> Any:
        if not chosen:
            chosen.append(_tracer_for(handler))
        return chosen[0](event, context)

    return wrapper


def _with_idempotency_context(handler: Handler) -> Handler:
    @functools.wraps(handler)
    def wrapper(event: dict, context: Any) -> Any:
        register = getattr(runtime().plane, "register_lambda_context", None)
        if register is not None and context is not None:
            register(context)
        return handler(event, context)

    return wrapper


# -- the HTTP API --------------------------------------------------------------------------


@traced
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
@_with_idempotency_context
def api_handler(event: dict, context: Any) -> dict:
    return resolver().resolve(event, context)


# -- one step of the lifecycle state machine ----------------------------------------------


def _result(result: ReconcileResult) -> dict[str, Any]:
    # Step Functions' Wait takes whole seconds: round up, so a wait is never skipped.
    return {
        "done": result.done,
        "wait": int(math.ceil(result.wait)),
        "status": result.status.value,
    }


def describe_error(error: Any) -> str:
    """A readable message from a Catch's ``$.error`` (``{"Error", "Cause"}``; a Lambda
    error's Cause is JSON with ``errorType`` and ``errorMessage``)."""
    import json

    if not isinstance(error, dict):
        return str(error or "unknown error")[:2000]
    name, cause = str(error.get("Error") or "Error"), error.get("Cause")
    try:
        parsed = json.loads(cause) if isinstance(cause, str) else cause
    except ValueError:
        parsed = cause
    if isinstance(parsed, dict) and "errorMessage" in parsed:
        name = str(parsed.get("errorType") or name)
        cause = parsed["errorMessage"]
    return f"{name}: {cause}"[:2000] if cause else name


def _fail(rt: AwsRuntime, cluster_id: str, error: Any) -> ReconcileResult:
    """Record the state machine's caught error as the cluster's failure (target stopped),
    then take the first teardown step; the state machine's teardown loop does the rest."""
    from billow_control.core.models import ClusterStatus, ReconcileResult
    from billow_control.core.ports import StaleRecordError

    message = f"the lifecycle workflow failed: {describe_error(error)}"
    for _ in range(10):
        record = rt.store.get_cluster(cluster_id)
        if record is None:
            return ReconcileResult(done=True, status=ClusterStatus.stopped)
        if record.status.terminal or record.fail_on_stop:
            break  # failed already; only the teardown is left
        try:
            rt.reconciler.fail(record, "orchestration-error", message, [])
            break
        except StaleRecordError:
            continue
    try:
        return rt.reconciler.reconcile(cluster_id)
    except Exception:
        logger.exception("teardown step after failure raised; the teardown loop retries")
        return ReconcileResult(
            done=False, wait=rt.settings.reconcile_interval, status=ClusterStatus.stopping
        )


@traced
@logger.inject_lambda_context
@metrics.log_metrics
def reconcile_handler(event: dict, context: Any) -> dict[str, Any]:
    """``{"cluster_id", "action", "generation"?, "error"?}`` -> ``{"done", "wait", "status"}``.

    ``reconcile`` takes one step toward the cluster's target (an execution of an older
    generation is told it is done); ``fail`` records the caught error and starts the
    teardown. Infrastructure errors raise: the state machine retries, then catches.
    """
    from billow_control.core.models import ClusterStatus, ReconcileResult

    cluster_id = str(event["cluster_id"])
    action = event.get("action", "reconcile")
    logger.set_correlation_id(cluster_id)
    logger.append_keys(cluster_id=cluster_id, action=action)
    rt = runtime()
    if action == "fail":
        return _result(_fail(rt, cluster_id, event.get("error")))
    if action != "reconcile":
        raise ValueError(f"unknown action {action!r}; expected 'reconcile' or 'fail'")
    generation = event.get("generation")
    if generation is not None:
        record = rt.store.get_cluster(cluster_id)
        if record is not None and record.generation != int(generation):
            logger.info(
                "execution of generation %s superseded by %s", generation, record.generation
            )
            return _result(ReconcileResult(done=True, status=record.status))
        if record is None:
            return _result(ReconcileResult(done=True, status=ClusterStatus.stopped))
    result = rt.reconciler.reconcile(cluster_id)
    logger.info("reconciled", extra={"done": result.done, "status": result.status.value})
    return _result(result)


# -- the scheduled reaper -----------------------------------------------------------------


def _needs_work(rt: AwsRuntime, record: ClusterRecord) -> bool:
    """Would a reconcile of this active cluster do anything?"""
    from billow_control.core.models import ClusterStatus, ClusterTarget

    if record.target == ClusterTarget.stopped or record.status != ClusterStatus.ready:
        return True
    if record.remove_workers:
        return True
    beat = rt.store.get_heartbeat(record.id)
    return beat is not None and len(beat.heartbeat.workers) != record.desired_workers


def resync(rt: AwsRuntime, active: list[ClusterRecord]) -> list[str]:
    """Start an execution for every active cluster that has not converged and has none
    running: the level-triggered backstop for a submit lost while an execution ended."""
    waiting = [r for r in active if _needs_work(rt, r)]
    if not waiting:
        return []
    running = rt.orchestrator.running_clusters()
    started = []
    for record in waiting:
        if record.id in running:
            continue
        fresh = rt.store.get_cluster(record.id)  # the index is eventually consistent
        if fresh is not None and fresh.active and rt.orchestrator.start(fresh):
            started.append(fresh.id)
    return started


def sweep(rt: AwsRuntime, active_ids: set[str]) -> list[str]:
    """Delete launch templates and security groups of clusters that are not active.

    The active-cluster index is eventually consistent, so a cluster created a moment ago
    may be missing from it while its first reconcile creates these: clusters whose
    record, read strongly, is active are kept too.
    """
    from billow_control.adapters.aws.ec2_provider import TAG_CLUSTER, TAG_DEPLOYMENT

    ec2 = rt.provider.ec2
    deployment = [{"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [rt.settings.deployment]}]
    owners: set[str] = set()
    for operation, key in (
        ("describe_launch_templates", "LaunchTemplates"),
        ("describe_security_groups", "SecurityGroups"),
    ):
        for page in ec2.get_paginator(operation).paginate(Filters=deployment):
            for resource in page[key]:
                tags = {t["Key"]: t["Value"] for t in resource.get("Tags") or []}
                owners.add(tags.get(TAG_CLUSTER, ""))
    keep = set(active_ids)
    for cluster_id in sorted(owners - keep - {""}):
        record = rt.store.get_cluster(cluster_id)
        if record is not None and record.active:
            keep.add(cluster_id)
    return rt.provider.sweep_cluster_resources(keep)


@traced
@logger.inject_lambda_context
@metrics.log_metrics
def reaper_handler(event: dict, context: Any) -> dict[str, Any]:
    """One watchdog pass: stop idle, expired or silent clusters and terminate orphaned
    instances (``Reaper.run_once``), delete what terminated clusters left (launch
    templates, security groups), and resubmit active clusters that are not converging."""
    rt = runtime()
    report = rt.reaper.run_once()
    active = rt.store.list_clusters(None, active_only=True)
    cleaned = sweep(rt, {r.id for r in active})
    resubmitted = resync(rt, active)
    summary = {
        "clusters_read": report.clusters_read,
        "stopped": report.stopped,
        "failed": report.failed,
        "warned": report.warned,
        "orphans_terminated": report.orphans_terminated,
        "resources_cleaned": cleaned,
        "resubmitted": resubmitted,
    }
    logger.info("reaper pass", extra=summary)
    return summary


# -- commands from the deployment's bus ---------------------------------------------------


def _refuse(event: dict, code: str, message: str) -> dict[str, Any]:
    logger.warning(
        "refused command",
        extra={"event_id": event.get("id"), "error": code, "reason": message},
    )
    return {"ok": False, "error": code, "message": message}


def _own_account(context: Any) -> str | None:
    arn = str(getattr(context, "invoked_function_arn", "") or "")
    parts = arn.split(":")
    return parts[4] if len(parts) > 4 and parts[4] else None


@traced
@logger.inject_lambda_context
@metrics.log_metrics
def events_handler(event: dict, context: Any) -> dict[str, Any]:
    """Carry out one ``billow.command`` (stop or scale) as the user it names; see the
    module docstring for who may send commands and why."""
    import re

    from billow_control.core.errors import ApiError
    from billow_control.core.models import ScaleRequest

    if event.get("detail-type") != COMMAND_DETAIL_TYPE:
        return _refuse(event, "not-a-command", f"detail-type must be {COMMAND_DETAIL_TYPE!r}")
    own = _own_account(context)
    if own is not None and str(event.get("account")) != own:
        return _refuse(event, "foreign-account", "commands are accepted from this account only")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return _refuse(event, "invalid", "detail must be an object")
    unknown = sorted(set(detail) - _COMMAND_FIELDS)
    if unknown:
        return _refuse(
            event, "invalid", f"unknown fields {unknown}; allowed {sorted(_COMMAND_FIELDS)}"
        )
    action, cluster_id = detail.get("action"), detail.get("cluster_id")
    user_id = detail.get("user_id")
    if action not in ("stop", "scale"):
        return _refuse(event, "invalid", "action must be 'stop' or 'scale'")
    if not isinstance(cluster_id, str) or not isinstance(user_id, str):
        return _refuse(event, "invalid", "cluster_id and user_id must be strings")
    reason = detail.get("reason") or "command"
    if not isinstance(reason, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", reason):
        return _refuse(event, "invalid", "reason must be 1-32 lower-case letters, digits, dashes")
    logger.append_keys(cluster_id=cluster_id, action=action)
    logger.info(
        "command",
        extra={
            "event_id": event.get("id"),
            "source": event.get("source"),
            "account": event.get("account"),
            "user_id": user_id,
        },
    )
    rt = runtime()
    user = rt.store.get_user(user_id)
    if user is None:
        return _refuse(event, "unknown-user", f"no user {user_id!r}")
    try:
        if action == "stop":
            cluster = rt.plane.stop_cluster(user, cluster_id, reason=reason)
        else:
            try:
                scale = ScaleRequest.model_validate({"n_workers": detail.get("n_workers")})
            except ValueError as e:
                return _refuse(event, "invalid", f"n_workers: {e}")
            cluster = rt.plane.scale_cluster(user, cluster_id, scale)
    except ApiError as e:
        return _refuse(event, e.code, e.message)
    return {
        "ok": True,
        "cluster": {k: cluster.get(k) for k in ("id", "status", "target", "desired_workers")},
    }
