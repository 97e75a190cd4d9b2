"""Process-level tuning applied once a worker has started.

CPython's cyclic garbage collector walks every tracked object in a generation when that
generation is collected. A worker holds a few hundred thousand long-lived objects (FastAPI,
SQLAlchemy, pydantic and the app's own modules, schemas and routes), and each full collection
walked all of them again while a request waited: a 1,000-transaction batch allocates enough
to trigger several. ``gc.freeze()`` moves everything alive after start-up into a permanent
generation the collector skips, and a larger first threshold makes young collections rarer;
reference counting still frees almost everything a request allocates at once.
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 10_000  # CPython's default is 700 allocations
_frozen = False


def freeze_startup_objects() -> None:
    """Once per process: exempt what start-up built from future collections."""
    global _frozen
    if _frozen:
        return
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, oldest)
    _frozen = True
