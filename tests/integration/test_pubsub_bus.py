"""The Pub/Sub event bus on Google's emulator: a usage event and a cluster event arrive on
a subscription with the EventBridge schema and the attributes subscribers filter on."""

from __future__ import annotations

import json
import uuid

import pytest
from google.cloud import pubsub_v1

from billow_control.adapters.gcp.pubsub_bus import PubSubBus
from tests.unit.test_reconcile import World

pytestmark = pytest.mark.integration


def test_usage_and_cluster_events_reach_a_subscription(pubsub_host: str, tmp_path) -> None:
    project = f"billow-{uuid.uuid4().hex[:6]}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, "events")
    subscription = subscriber.subscription_path(project, "audit")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    bus = PubSubBus(publisher, topic, "prod")
    totals = {"month": "2026-10", "teams": {"etl": {"cpu_hours": 12.5}}}

    bus.publish_usage("usage.month-closed", totals)
    world = World(tmp_path)
    record = world.store.get_cluster(world.create(1))
    assert record is not None
    bus.publish("ready", record, {"workers": 1})

    pulled = subscriber.pull(subscription=subscription, max_messages=10, timeout=10)
    messages = {m.message.attributes["type"]: m.message for m in pulled.received_messages}
    usage = messages["billow.usage.month-closed"]
    body = json.loads(usage.data)
    assert body["detail-type"] == "billow.usage.month-closed"
    assert body["detail"]["kind"] == "usage.month-closed"
    assert body["detail"]["detail"] == totals and body["detail"]["deployment"] == "prod"
    assert usage.attributes["deployment"] == "prod" and "cluster_id" not in usage.attributes
    ready = messages["billow.cluster.ready"]
    assert json.loads(ready.data)["detail-type"] == "billow.cluster.ready"
    assert ready.attributes["cluster_id"] == record.id
