"""chatstate's keyed store: small adapter state that survives a gateway restart; the contract and
`__all__` (the names it documents, a test checks them) in docs/state.md."""

from ._aio import AsyncKeyedStore, commit_staged_async
from ._database import Database, checkpoint, open_async_keyed_store, open_keyed_store, probe, sweep_expired
from ._files import check_database, database_path, state_dir
from ._spec import (
    MAX_BATCH_KEYS,
    MAX_KEY_BYTES,
    MAX_NAMESPACE_BYTES,
    MAX_PAGE_ROWS,
    MAX_VALUE_BYTES,
    MAX_VALUE_BYTES_CEILING,
    MAX_VALUE_DEPTH,
    SCHEMA_VERSION,
    Entry,
    ErrorCode,
    StateStoreError,
    StoreSettings,
)
from ._store import KeyedStore, StagedWrite, commit_staged, op_counts

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
    "op_counts",
    "open_async_keyed_store",
    "open_keyed_store",
    "probe",
    "state_dir",
    "sweep_expired",
]
