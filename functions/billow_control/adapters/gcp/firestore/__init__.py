"""The Firestore store of the GCP runtime.

* ``documents``: the collections (a table of them in its docstring), document ids, and
  the optimistic conditional commit every transition uses.
* ``store``: ``FirestoreStore``, the ``Store`` port on those collections.
"""

from .store import FirestoreStore

__all__ = ["FirestoreStore"]
