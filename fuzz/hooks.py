"""Schemathesis hooks: let generated cases name ids that exist, not only random strings.

``fuzz.run`` writes the seeded community's ids to the file named by ``TIMEBANK_FUZZ_IDS``.
For every path parameter that names a resource, a case keeps its generated value or swaps in a
real id (half the time), so operations are exercised past their 404s: on existing rows, with
well-formed and hostile bodies alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import strategies as st

_IDS: dict[str, list[str]] = {}
_path = os.environ.get("TIMEBANK_FUZZ_IDS")
if _path:
    _IDS = {k: list(v) for k, v in json.loads(Path(_path).read_text()).items() if v}


@schemathesis.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    if not path_parameters:
        return st.just(path_parameters)
    known = {name: _IDS[name] for name in path_parameters if name in _IDS}
    if not known:
        return st.just(path_parameters)
    choices = {
        name: st.one_of(st.just(value), st.sampled_from(known[name]))
        if name in known
        else st.just(value)
        for name, value in path_parameters.items()
    }
    return st.fixed_dictionaries(choices)
