"""Spot interruptions the scheduler plugin reports: the record counts them, and each new
one publishes ``spot-interrupted`` (EventBridge: ``billow.cluster.spot-interrupted``).

The heartbeat's ``spot_interrupted`` lists, cumulatively, the workers whose agents got
EC2's interruption notice; the record's ``spot_interruptions`` is how many the control
plane has seen. Replacing the capacity is reconcile's ordinary job (a retired worker's
instance terminates; the next reconcile launches a fresh worker), on demand after an
interruption when the policy is ``spot_with_fallback`` (``InstanceSpec.after_interruption``).
"""

from __future__ import annotations

from .models import ClusterRecord, Heartbeat
from .ports import Ports, StaleRecordError

WRITE_RETRIES = 8


def note_interruptions(ports: Ports, record: ClusterRecord, beat: Heartbeat) -> ClusterRecord:
    """Count the interruptions ``beat`` reports beyond the record's, and publish them
    once. Returns the record as stored; a concurrent writer is retried against."""
    for _ in range(WRITE_RETRIES):
        seen = len(beat.spot_interrupted)
        new = beat.spot_interrupted[record.spot_interruptions :]
        if not new:
            return record
        record.spot_interruptions = seen
        record.updated_at = ports.clock.now()
        try:
            stored = ports.store.update_cluster(record)
        except StaleRecordError:
            fresh = ports.store.get_cluster(record.id)
            if fresh is None:
                return record
            record = fresh
            continue
        ports.events.publish("spot-interrupted", stored, {"workers": new, "count": seen})
        return stored
    return record
