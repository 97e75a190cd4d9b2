"""The content hash the engine stores is the one reconciliation recomputes from the rows."""

from __future__ import annotations

import uuid
from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from app.ledger.posting import PostingRequest, content_hash
from app.models.ledger import TransactionKind
from app.reconciliation.checks import transaction_content_hash

ids = st.builds(uuid.UUID, int=st.integers(min_value=0, max_value=2**128 - 1))


@given(
    transaction_id=ids,
    community_id=ids,
    lines=st.lists(st.tuples(ids, st.integers(-600_000, 600_000)), min_size=2, max_size=8),
    repeated=st.booleans(),
    memo=st.text(max_size=20),
)
def test_the_stored_hash_is_the_one_reconciliation_recomputes(
    transaction_id: uuid.UUID,
    community_id: uuid.UUID,
    lines: list[tuple[uuid.UUID, int]],
    repeated: bool,
    memo: str,
) -> None:
    if repeated:  # an account twice: its lines keep their order
        lines = [*lines, (lines[0][0], lines[0][1] + 1)]
    request = PostingRequest(
        kind=TransactionKind.transfer,
        lines=tuple(lines),
        occurred_on=date(2026, 11, 26),
        memo=memo,
        details={},
    )
    expected = transaction_content_hash(
        transaction_id, community_id, "transfer", "2026-11-26", None, memo, lines
    )
    assert content_hash(transaction_id, community_id, request) == expected
