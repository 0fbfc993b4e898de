"""Lambda entry points of the AWS control plane (``serverless.yml``: ``functions/aws.<name>``).

=====================  ========================================================================
handler                invoked by
=====================  ========================================================================
``api_handler``        the HTTP API (``ANY /v1/{proxy+}``): the shared powertools route table
``reconcile_handler``  the lifecycle state machine: ``{"cluster_id", "loop", "action":
                       "reconcile" | "fail", "error"?}`` -> ``{"done", "wait", "status"}``
``reaper_handler``     an EventBridge schedule, every minute: one watchdog pass
``events_handler``     ``billow.command`` events on the deployment's bus (``core.commands``)
``bootstrap_handler``  the deployer, directly (``lambda:InvokeFunction``, ``billow admin
                       bootstrap``): creates the first admin once; no HTTP route reaches it
=====================  ========================================================================

Each handler parses its event, makes one call into the core through the runtime that
``billow_control.runtimes.aws`` wires once per container, and returns. Importing this
module loads only the powertools logger and metrics; each adapter and boto3 client is
built when a request first needs it; dask is never imported.

Observability: JSON logs (correlation id = API request id or cluster id), EMF metrics
(``ClustersCreated``, ``StartLatency``, ``Failures``) in ``$POWERTOOLS_METRICS_NAMESPACE``,
and X-Ray in Lambda unless ``POWERTOOLS_TRACE_DISABLED`` (the tracer is created on first
invocation: aws-xray-sdk alone costs more than the rest of the cold import).
"""

from __future__ import annotations

import functools
import logging
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

if TYPE_CHECKING:
    from billow_control.runtimes.aws import AwsRuntime

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "billow"
logger = Logger(service=SERVICE, utc=True)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "Billow", service=SERVICE
)
# Most invocations publish no metric: that is expected, not worth a warning on each.
warnings.filterwarnings("ignore", "No application metrics to publish", UserWarning)
Handler = Callable[[dict, Any], Any]


def runtime() -> AwsRuntime:
    """The container's runtime, wired on first use (its library loggers log as ours)."""
    from billow_control.runtimes import aws

    if aws._runtime is None:
        from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

        logging.getLogger("billow_control")  # register the parent of the library's loggers
        copy_config_to_registered_loggers(source_logger=logger, include={"billow_control"})
    return aws.get_runtime()


@functools.cache
def resolver() -> Any:
    """The one powertools route table (``billow_control.api.app.build_app``)."""
    from billow_control.api.app import build_app

    return build_app(lambda: runtime().plane)


def traced(handler: Handler) -> Handler:
    """X-Ray tracing of ``handler`` in Lambda, decided on its first invocation; timings
    and errors only, never the handler's answer."""
    chosen: list[Handler] = []

    @functools.wraps(handler)
    def wrapper(event: dict, context: Any) -> Any:
        if not chosen:
            off = os.environ.get("POWERTOOLS_TRACE_DISABLED", "").lower() in ("1", "true")
            chosen.append(handler)
            if os.environ.get("LAMBDA_TASK_ROOT") and not off:
                try:
                    from aws_lambda_powertools import Tracer

                    tracer = Tracer(service=SERVICE, patch_modules=["botocore"])
                    # Never the response: answers carry API tokens, client keys and
                    # the first admin's token, which must not land in X-Ray metadata.
                    chosen[0] = tracer.capture_lambda_handler(handler, capture_response=False)
                except Exception:  # aws-xray-sdk missing or broken: run untraced
                    logger.warning("X-Ray tracing unavailable", exc_info=True)
        return chosen[0](event, context)

    return wrapper


@traced
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
def api_handler(event: dict, context: Any) -> dict:
    return resolver().resolve(event, context)


@traced
@logger.inject_lambda_context(correlation_id_path="cluster_id")
@metrics.log_metrics
def reconcile_handler(event: dict, context: Any) -> dict[str, Any]:
    """One step of the state machine's loop ``loop``, under its lease: ``reconcile`` moves
    the cluster toward its target; ``fail`` records the caught error and starts the
    teardown. Infrastructure errors raise: the state machine retries, then catches."""
    from billow_control.runtimes.aws import describe_error, step_output

    cluster_id, action = str(event["cluster_id"]), event.get("action", "reconcile")
    loop = str(event["loop"]) if event.get("loop") else None
    logger.append_keys(cluster_id=cluster_id, action=action, loop=loop)
    lifecycle = runtime().plane.lifecycle
    if action not in ("reconcile", "fail"):
        raise ValueError(f"unknown action {action!r}; expected 'reconcile' or 'fail'")

    def run() -> Any:
        if action == "fail":
            return lifecycle.abort(cluster_id, describe_error(event.get("error")))
        return lifecycle.reconcile(cluster_id)

    return step_output(runtime().step(cluster_id, loop, run))


@traced
@logger.inject_lambda_context
@metrics.log_metrics
def reaper_handler(event: dict, context: Any) -> dict[str, Any]:
    """One watchdog pass (``core.watchdog``): reap, sweep orphans, release, resync, refill
    the warm pool."""
    summary = runtime().plane.watchdog.run_once().summary()
    logger.info("watchdog pass", extra=summary)
    return summary


@traced
@logger.inject_lambda_context
@metrics.log_metrics
def events_handler(event: dict, context: Any) -> dict[str, Any]:
    """Carry out one ``billow.command`` as the user it names (``core.commands``)."""
    from billow_control.core.commands import Envelope, carry_out

    arn = str(getattr(context, "invoked_function_arn", "") or "").split(":")
    envelope = Envelope(
        id=event.get("id"),
        kind=event.get("detail-type"),
        source=event.get("source"),
        origin=str(event.get("account")),
        detail=event.get("detail"),
    )
    own_account = arn[4] if len(arn) > 4 and arn[4] else None
    return carry_out(lambda: runtime().plane, envelope, own_account)


@traced
@logger.inject_lambda_context
def bootstrap_handler(event: dict, context: Any) -> dict[str, Any]:
    """Create the deployment's first admin (``ControlPlane.first_admin``): ``{"ok": True,
    "name", "token", "server"}``, or ``{"ok": False, "error", "message"}`` once users
    exist. IAM is the guard: only principals allowed ``lambda:InvokeFunction`` on this
    function reach it. The answer carries the token, so it is never logged."""
    from billow_control.core.errors import ApiError

    try:
        return {"ok": True, **runtime().plane.first_admin()}
    except ApiError as e:
        logger.warning("bootstrap refused", extra={"error": e.code})
        return {"ok": False, "error": e.code, "message": e.message}
