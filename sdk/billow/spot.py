"""Spot interruptions, as a worker's agent sees them: EC2 posts a notice in the instance
metadata (``spot/instance-action``, about two minutes before it reclaims the machine).

``watch_for_interruption`` polls it (IMDSv2, ``billow.imds``); on a notice it tells the
scheduler (an event on ``SPOT_TOPIC``, which the Billow scheduler plugin counts and
reports to the control plane) and asks it to retire this worker gracefully
(``retire_workers``, ``close_workers=True``): the scheduler moves the worker's data to
other workers and reschedules its tasks, then closes it. The agent then exits, and the
instance shuts down; reconcile replaces the lost capacity.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .imds import Imds, ImdsError

log = logging.getLogger("billow.spot")
SPOT_TOPIC = "billow-spot-interruption"
NOTICE_PATH = "spot/instance-action"


async def watch_for_interruption(worker: Any, endpoint: str, interval: float = 5.0) -> bool:
    """Poll ``endpoint`` every ``interval`` seconds until a notice (then retire the
    worker and return ``True``) or the worker closes (``False``). IMDS failures are
    logged and polling goes on."""
    from distributed.core import Status

    imds = Imds(endpoint)
    while worker.status in (Status.init, Status.running, Status.paused):
        try:
            notice = await asyncio.to_thread(imds.get, NOTICE_PATH)
        except ImdsError as e:
            log.warning("spot notice check failed: %s", e)
            notice = None
        if notice:
            log.warning("spot interruption notice %s: retiring worker %s", notice, worker.name)
            await worker.scheduler.log_event(
                topic=SPOT_TOPIC, msg={"worker": str(worker.name), "notice": notice}
            )
            await worker.scheduler.retire_workers(
                workers=[worker.address],
                close_workers=True,
                remove=True,
                stimulus_id=f"billow-spot-interruption-{time.time()}",
            )
            return True
        await asyncio.sleep(interval)
    return False
