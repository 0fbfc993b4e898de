"""Cluster routes: each one calls one ControlPlane method for the caller the
guard authenticated (``api.guard``), and returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Header, Query

from ..core import ingress
from ..core.idempotency import MAX_KEY_LENGTH
from ..core.models import ClusterRequest, ScaleRequest
from ..core.service import ControlPlane
from .guard import caller
from .openapi import created
from .responses import json_response


def source_ip(event: dict[str, Any]) -> str | None:
    """The requester's address: HTTP API's ``requestContext.http.sourceIp`` (also what the
    embedded server sets, its peer), or REST API's ``requestContext.identity.sourceIp``."""
    context = event.get("requestContext") or {}
    found = (context.get("http") or {}).get("sourceIp")
    return found or (context.get("identity") or {}).get("sourceIp")


def cluster_router(plane: Callable[[], ControlPlane]) -> Router:
    router = Router()

    @router.post("/v1/clusters", responses=created("The cluster an Idempotency-Key created"))
    def create_cluster(
        request: ClusterRequest,
        idempotency_key: Annotated[
            str | None, Header(alias="idempotency-key", min_length=1, max_length=MAX_KEY_LENGTH)
        ] = None,
    ) -> Response[dict[str, Any]]:
        """A new cluster; ``allow_ingress_from: "me"`` is the address the request came
        from (API Gateway's, or the embedded server's peer)."""
        request = ingress.with_requester(request, source_ip(router.current_event.raw_event))
        cluster, is_new = plane().create_cluster(caller(router), request, idempotency_key)
        return json_response(cluster, 201 if is_new else 200)

    @router.get("/v1/clusters")
    def list_clusters(
        active: Annotated[bool, Query()] = False,
        name: Annotated[str | None, Query()] = None,
    ) -> dict[str, Any]:
        return {"clusters": plane().list_clusters(caller(router), active_only=active, name=name)}

    @router.get("/v1/clusters/<cluster_id>")
    def get_cluster(cluster_id: str) -> dict[str, Any]:
        return plane().get_cluster(caller(router), cluster_id)

    @router.post("/v1/clusters/<cluster_id>/scale")
    def scale_cluster(cluster_id: str, scale: ScaleRequest) -> dict[str, Any]:
        return plane().scale_cluster(caller(router), cluster_id, scale)

    @router.post("/v1/clusters/<cluster_id>/stop")
    def stop_cluster(cluster_id: str) -> dict[str, Any]:
        return plane().stop_cluster(caller(router), cluster_id)

    @router.get("/v1/clusters/<cluster_id>/credentials")
    def client_credentials(cluster_id: str) -> dict[str, Any]:
        return plane().client_credentials(caller(router), cluster_id)

    @router.get("/v1/instance-types")
    def list_instance_types(
        cores: Annotated[int | None, Query(ge=1, le=1024)] = None,
        memory: Annotated[str | None, Query(max_length=40)] = None,
        arch: Annotated[Literal["x86_64", "arm64"] | None, Query()] = None,
        gpu: Annotated[int | None, Query(ge=0, le=16)] = None,
    ) -> dict[str, Any]:
        """The deployment region's machine types that fit, smallest first."""
        return plane().list_machine_types(caller(router), cores, memory, arch, gpu)

    @router.get("/v1/clusters/<cluster_id>/logs")
    def cluster_logs(
        cluster_id: str, lines: Annotated[int, Query(ge=1, le=10_000)] = 200
    ) -> dict[str, Any]:
        return plane().cluster_logs(caller(router), cluster_id, lines)

    return router
