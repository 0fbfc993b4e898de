"""Deployment settings the core needs, filled by each runtime's composition root."""

from __future__ import annotations

from pydantic import BaseModel


class ControlSettings(BaseModel):
    deployment: str = "embedded"
    control_url: str = "http://127.0.0.1:8787"
    start_timeout: float = 600.0
    idle_timeout: float = 1200.0
    no_client_timeout: float = 120.0
    heartbeat_loss_timeout: float = 1200.0
    heartbeat_interval: float = 5.0
    instance_token_ttl: float = 900.0
    reconcile_interval: float = 0.5
    log_lines_on_failure: int = 30
    reaper_interval: float = 30.0
    orphan_grace: float = 300.0
    gpu_utilization_threshold: float = 0.1
    gpu_idle_warning: float = 900.0
