"""Hypothesis profiles for the ledger's property suites (registered on import).

``ledger-ci`` is derandomized (the same examples on every run, no example database), so CI is
stable; ``ledger-dev`` explores new examples on each run and remembers failures locally. CI
picks ``ledger-ci`` when ``CI`` is set; ``TIMEBANK_HYPOTHESIS_PROFILE`` overrides either way.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON: dict[str, object] = {
    "deadline": None,  # requests hit a real database; their time is not the property
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
    "print_blob": True,
}
settings.register_profile("ledger-ci", derandomize=True, database=None, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("ledger-dev", **_COMMON)  # type: ignore[arg-type]


def ledger_profile() -> str:
    default = "ledger-ci" if os.environ.get("CI") else "ledger-dev"
    return os.environ.get("TIMEBANK_HYPOTHESIS_PROFILE", default)
