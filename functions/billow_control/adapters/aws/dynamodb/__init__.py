"""The DynamoDB store of the AWS runtime.

* ``items``: the tables (a table of them in its docstring), their pynamodb item classes,
  and their binding to one deployment's table prefix, region and endpoint.
* ``store``: ``DynamoDBStore``, the ``Store`` port on those tables.
* ``tables``: create, delete and list the tables (tests, benchmarks, local development).
"""

from .store import DynamoDBStore
from .tables import create_tables, delete_tables, table_names

__all__ = ["DynamoDBStore", "create_tables", "delete_tables", "table_names"]
