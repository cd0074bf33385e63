"""Microsoft Teams (botbuilder-core): sent-message rows that survive restarts, one answer per
activity. Files in reading order: `state.py`, `platform.py` (the wire, its connector clients
reused across turns; with `auth.py`: who may call the bot), `handlers.py`, `config.py`, `plugin.py`.
"""
