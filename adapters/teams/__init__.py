"""Microsoft Teams (botbuilder-core): sent-message rows that survive restarts, one answer per
activity. Files in reading order: `state.py`, `platform.py` (the wire; with `auth.py`: who may
call the bot, and `clients.py`: connector clients reused), `handlers.py`, `config.py`, `plugin.py`.
"""
