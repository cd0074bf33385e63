"""Chat platform adapters migrated onto keyed stores; `common` holds the shared pattern."""
