"""Scheduled scene processing: an inbox watched, every scene run through a workflow exactly once.

Modules, lower never imports higher: ``ledger`` (SQLite record of every scene),
``inbox`` (listing, settle time, identity, staging of remote scenes), ``claims``
(scheduler locks for watchers on several machines), ``outputs`` (staging,
publishing, done markers) <- ``service`` (passes, retries, the service loop).
"""

from __future__ import annotations

from tilepipe.watch.inbox import DEFAULT_IGNORE, DEFAULT_PATTERNS, Entry, Inbox
from tilepipe.watch.ledger import STATES, Ledger, SceneRecord
from tilepipe.watch.outputs import Outputs, outputs_root
from tilepipe.watch.service import Outcome, Watcher, WatchOptions

__all__ = [
    "DEFAULT_IGNORE",
    "DEFAULT_PATTERNS",
    "STATES",
    "Entry",
    "Inbox",
    "Ledger",
    "Outcome",
    "Outputs",
    "SceneRecord",
    "WatchOptions",
    "Watcher",
    "outputs_root",
]
