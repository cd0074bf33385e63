"""chatstate: a chat-bot gateway whose adapter state survives restarts.

One import namespace: `chatstate.state` (the keyed store, folder `state/`),
`chatstate.gateway` (the process and CLI, folder `gateway/`) and `chatstate.adapters` (the four
migrated adapters, folder `adapters/`). pyproject.toml maps each to its folder, so nothing
installs a top-level `state`, `gateway` or `adapters` module that could shadow, or be shadowed by,
another distribution or a folder in the current directory.
"""

__all__ = ["__version__"]

__version__ = "0.2.0"  # the one place; pyproject.toml reads it (`dynamic`), `--version` prints it
