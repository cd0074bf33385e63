"""chatstate's keyed store: small adapter state that survives a gateway restart.

    from chatstate.state import open_keyed_store, open_async_keyed_store, StateStoreError

The contract lives in docs/state.md; `__all__` is what that page documents (a test checks it).
"""

from ._aio import AsyncKeyedStore, commit_staged_async, open_async_keyed_store
from ._database import Database, check_database, checkpoint, probe, sweep_expired
from ._errors import ErrorCode, StateStoreError
from ._open import open_keyed_store
from ._settings import (
    MAX_BATCH_KEYS,
    MAX_KEY_BYTES,
    MAX_NAMESPACE_BYTES,
    MAX_PAGE_ROWS,
    MAX_VALUE_BYTES,
    MAX_VALUE_BYTES_CEILING,
    MAX_VALUE_DEPTH,
    SCHEMA_VERSION,
    StoreSettings,
)
from ._store import Entry, KeyedStore, StagedWrite, commit_staged, database_path, op_counts, state_dir

__all__ = [
    "AsyncKeyedStore",
    "Database",
    "Entry",
    "ErrorCode",
    "KeyedStore",
    "MAX_BATCH_KEYS",
    "MAX_KEY_BYTES",
    "MAX_NAMESPACE_BYTES",
    "MAX_PAGE_ROWS",
    "MAX_VALUE_BYTES",
    "MAX_VALUE_BYTES_CEILING",
    "MAX_VALUE_DEPTH",
    "SCHEMA_VERSION",
    "StagedWrite",
    "StateStoreError",
    "StoreSettings",
    "check_database",
    "checkpoint",
    "commit_staged",
    "commit_staged_async",
    "database_path",
    "open_async_keyed_store",
    "op_counts",
    "open_keyed_store",
    "probe",
    "state_dir",
    "sweep_expired",
]
