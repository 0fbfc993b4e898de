"""The store's DynamoDB tables: pynamodb item classes, and their binding to one deployment.

Every table is named ``table_prefix`` + suffix (a prefix such as ``"billow-prod-"``); all
use on-demand billing. ``infra/aws/tables.yml`` must define the same tables, keys and
indexes (``tests/integration/test_deploy_artifacts.py`` compares them).

==========================  ==============================  ===================================
table (suffix)              key                             holds
==========================  ==============================  ===================================
``clusters``                ``id``                          one item per cluster (see below)
``cluster-keys``            ``owner`` + ``key``             ``name#<name>``: the lock that keeps
                                                            active names unique per owner;
                                                            ``idem#<key>``: an Idempotency-Key
``heartbeats``              ``cluster_id``                  the latest heartbeat (overwritten)
``secrets``                 ``cluster_id`` + ``name``       encrypted blobs (binary)
``users``                   ``id``                          users
``user-names``              ``name``                        ``user_id``: the lock that keeps
                                                            user names unique
``api-tokens``              ``token_hash``                  ``user_id`` of an API token and its
                                                            ``ApiToken`` as JSON in ``doc``
``cluster-tokens``          ``cluster_id``                  the cluster's heartbeat token hash
``instance-credentials``    ``token_hash``                  one-time bootstrap tokens
``software-environments``   ``owner`` + ``key``             ``latest#<name>``: the latest
                                                            revision of a named environment;
                                                            ``rev#<name>#<revision>``: each
                                                            revision (zero-padded, immutable)
``teams``                   ``name``                        teams (``Team`` as JSON in ``doc``)
``reconcile-loops``         ``cluster_id``                  the lease of the loop driving a
                                                            cluster (``adapters/aws/
                                                            reconcile_leases.py``)
``usage``                   ``instance_id``                 one ``UsageRecord`` per instance in
                                                            ``doc``; ``month#<YYYY-MM>``: the
                                                            mark of a closed month
==========================  ==============================  ===================================

A software environment's items keep the whole ``SoftwareEnvironment`` as JSON in ``doc``
(the latest revision twice: in its own item and in ``latest#<name>``, so listing reads one
item per environment). ``revision`` on the ``latest#`` item is what the next put's
transaction is conditional on. Only the API function reads or writes this table.

A usage item carries ``open_flag`` (``"1"``) only while its record is open: the sparse
GSI ``open-usage`` (``open_flag`` + ``instance_id``) holds open records only, so the
metering pass never reads finished ones. ``ended_us`` is the end in microseconds.

A cluster item keeps the whole ``ClusterRecord`` as JSON in ``doc``, plus the attributes
that conditions and indexes need:

* ``version``: a pynamodb ``VersionAttribute`` holding ``ClusterRecord.version + 1``
  (pynamodb writes 1 on the first save). Every write is conditional on it.
* ``owner`` + ``created_us`` (creation time in microseconds since the epoch): the GSI
  ``by-owner``, for all clusters of one owner, newest first.
* ``active_owner``: present only while the cluster is active (not stopped or failed),
  removed in the write that makes it terminal. The GSI ``active-by-owner``
  (``active_owner`` + ``created_us``) is therefore sparse: it holds active clusters only,
  so listing active clusters, of one owner (Query) or of everyone (Scan of the index),
  never reads a finished one.

Time to live: finished cluster items, idempotency items, instance credentials and loop
leases carry ``expires_at_epoch`` (Number, Unix seconds). The store only writes the
attribute; TTL on it for the ``clusters``, ``cluster-keys``, ``instance-credentials`` and
``reconcile-loops`` tables is enabled
by ``infra/aws/tables.yml``. Heartbeats, secrets and tokens of finished clusters do not
expire.

The item classes here are abstract (no table): ``bind_models`` subclasses each with its
own ``Meta``, so several stores (prefixes, endpoints) can live in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from pynamodb.attributes import (
    BinaryAttribute,
    BooleanAttribute,
    NumberAttribute,
    UnicodeAttribute,
    VersionAttribute,
)
from pynamodb.connection import Connection
from pynamodb.exceptions import DoesNotExist
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

PAY_PER_REQUEST = "PAY_PER_REQUEST"

# -- item shapes (abstract: ``bind_models`` binds them to tables) ------------------------


class _ActiveByOwner(GlobalSecondaryIndex["ClusterItem"]):
    class Meta:
        index_name = "active-by-owner"
        projection = AllProjection()

    active_owner = UnicodeAttribute(hash_key=True)
    created_us = NumberAttribute(range_key=True)


class _ByOwner(GlobalSecondaryIndex["ClusterItem"]):
    class Meta:
        index_name = "by-owner"
        projection = AllProjection()

    owner = UnicodeAttribute(hash_key=True)
    created_us = NumberAttribute(range_key=True)


class ClusterItem(Model):
    id = UnicodeAttribute(hash_key=True)
    version = VersionAttribute()
    owner = UnicodeAttribute()
    name = UnicodeAttribute()
    created_us = NumberAttribute()
    active_owner = UnicodeAttribute(null=True)
    expires_at_epoch = NumberAttribute(null=True)
    doc = UnicodeAttribute()
    by_owner = _ByOwner()
    active_by_owner = _ActiveByOwner()


class KeyItem(Model):
    owner = UnicodeAttribute(hash_key=True)
    key = UnicodeAttribute(range_key=True)
    cluster_id = UnicodeAttribute()
    request_hash = UnicodeAttribute(null=True)
    expires_at_epoch = NumberAttribute(null=True)


class HeartbeatItem(Model):
    cluster_id = UnicodeAttribute(hash_key=True)
    doc = UnicodeAttribute()


class SecretItem(Model):
    cluster_id = UnicodeAttribute(hash_key=True)
    name = UnicodeAttribute(range_key=True)
    value = BinaryAttribute(legacy_encoding=False)


class UserItem(Model):
    id = UnicodeAttribute(hash_key=True)
    doc = UnicodeAttribute()


class UserNameItem(Model):
    name = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute()


class ApiTokenItem(Model):
    token_hash = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute()
    doc = UnicodeAttribute(null=True)  # ApiToken; absent on tokens from before metadata


class TeamItem(Model):
    name = UnicodeAttribute(hash_key=True)
    doc = UnicodeAttribute()


class ClusterTokenItem(Model):
    cluster_id = UnicodeAttribute(hash_key=True)
    token_hash = UnicodeAttribute()


class CredentialItem(Model):
    token_hash = UnicodeAttribute(hash_key=True)
    used = BooleanAttribute()
    expires_us = NumberAttribute()
    expires_at_epoch = NumberAttribute()
    doc = UnicodeAttribute()


class _OpenUsage(GlobalSecondaryIndex["UsageItem"]):
    class Meta:
        index_name = "open-usage"
        projection = AllProjection()

    open_flag = UnicodeAttribute(hash_key=True)
    instance_id = UnicodeAttribute(range_key=True)


class UsageItem(Model):
    instance_id = UnicodeAttribute(hash_key=True)
    open_flag = UnicodeAttribute(null=True)
    ended_us = NumberAttribute(null=True)
    doc = UnicodeAttribute(null=True)
    open_usage = _OpenUsage()


class EnvironmentItem(Model):
    owner = UnicodeAttribute(hash_key=True)
    key = UnicodeAttribute(range_key=True)
    name = UnicodeAttribute()
    revision = NumberAttribute()
    doc = UnicodeAttribute()


class LoopItem(Model):
    """The lease of the reconcile loop (Step Functions execution) driving one cluster:
    ``loop`` names it, ``until`` (Unix seconds) is when it lapses, ``again`` asks it for
    one more step, ``stepped`` says it has taken a step. Released loops are deleted;
    ``expires_at_epoch`` lets TTL remove a lapsed one nobody took over."""

    cluster_id = UnicodeAttribute(hash_key=True)
    loop = UnicodeAttribute()
    until = NumberAttribute()
    again = BooleanAttribute(null=True)
    stepped = BooleanAttribute(null=True)
    expires_at_epoch = NumberAttribute(null=True)


M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class Models:
    """The item classes of one store, bound to its tables, region and endpoint."""

    cluster: type[ClusterItem]
    key: type[KeyItem]
    heartbeat: type[HeartbeatItem]
    secret: type[SecretItem]
    user: type[UserItem]
    user_name: type[UserNameItem]
    api_token: type[ApiTokenItem]
    cluster_token: type[ClusterTokenItem]
    credential: type[CredentialItem]
    environment: type[EnvironmentItem]
    team: type[TeamItem]
    usage: type[UsageItem]
    loop: type[LoopItem]

    def all(self) -> list[type[Model]]:
        """Every bound class, one per table."""
        return [
            self.cluster,
            self.key,
            self.heartbeat,
            self.secret,
            self.user,
            self.user_name,
            self.api_token,
            self.cluster_token,
            self.credential,
            self.environment,
            self.team,
            self.usage,
            self.loop,
        ]


def _bind(base: type[M], table: str, region: str, host: str | None) -> type[M]:
    """A subclass of ``base`` with its own ``Meta``, so its own table and index bindings."""
    meta = type(
        "Meta",
        (),
        {
            "table_name": table,
            "region": region,
            "host": host,
            "billing_mode": PAY_PER_REQUEST,
        },
    )
    return type(base.__name__, (base,), {"Meta": meta, "__module__": __name__})


def bind_models(prefix: str, region: str, host: str | None) -> Models:
    """The item classes bound to the tables ``prefix`` + suffix; makes no AWS call."""

    def bind(base: type[M], suffix: str) -> type[M]:
        return _bind(base, prefix + suffix, region, host)

    return Models(
        cluster=bind(ClusterItem, "clusters"),
        key=bind(KeyItem, "cluster-keys"),
        heartbeat=bind(HeartbeatItem, "heartbeats"),
        secret=bind(SecretItem, "secrets"),
        user=bind(UserItem, "users"),
        user_name=bind(UserNameItem, "user-names"),
        api_token=bind(ApiTokenItem, "api-tokens"),
        cluster_token=bind(ClusterTokenItem, "cluster-tokens"),
        credential=bind(CredentialItem, "instance-credentials"),
        environment=bind(EnvironmentItem, "software-environments"),
        team=bind(TeamItem, "teams"),
        usage=bind(UsageItem, "usage"),
        loop=bind(LoopItem, "reconcile-loops"),
    )


def share_connection(
    models: Models, region: str, host: str | None, max_pool_connections: int
) -> Connection:
    """One pynamodb ``Connection`` (so one botocore client) for every table of ``models``.

    pynamodb gives each model its own client, and each costs ~0.15 s of botocore model
    loading, paid again on every Lambda cold start. Makes no AWS call.
    """
    connection = Connection(region=region, host=host, max_pool_connections=max_pool_connections)
    for model in models.all():
        table = model._get_connection()
        connection.add_meta_table(table.get_meta_table())
        table.connection = connection
    return connection


def get_item(model: type[M], hash_key: str, range_key: str | None = None) -> M | None:
    """The item, read with strong consistency, or ``None`` when it does not exist."""
    try:
        return model.get(hash_key, range_key, consistent_read=True)
    except DoesNotExist:
        return None
