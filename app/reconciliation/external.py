"""Match an external record file (a GP practice's volunteer log, a council's timesheets, an
export from a previous system) against the exchanges posted in the ledger.

CSV columns (header row required; order free; extra columns ignored):

  external_ref   the record's own id (required, unique within the file)
  date           YYYY-MM-DD, the date of service
  provider       member id or the member's login email
  receiver       member id or the member's login email
  minutes        whole minutes > 0
  note           free text (optional)

Each record is claimed by at most one ledger pair (one provider -> receiver of a posted,
non-reversed exchange, with the minutes that passed between them), and each pair by at most one
record. The outcomes:

  matched              the record and its pair agree: same provider, receiver and minutes, the
                       dates at most ``tolerance_days`` apart.
  amount_mismatches    the pair is certainly the record's (its reference, or the same parties on
                       a date within tolerance) but the minutes differ. When the date differs
                       beyond tolerance too, ``differences`` lists both.
  date_mismatches      same parties and minutes (or the record's reference), but the dates are
                       further apart than the tolerance: at most DATE_MISMATCH_DAYS beyond it
                       for a match without reference, any distance with one.
  missing_from_ledger  no pair fits the record.
  missing_from_file    posted exchanges dated within the file's dates (+- tolerance) that no
                       record claimed.
  duplicates           a record with the same external_ref, or the same date, parties and
                       minutes, as an earlier one; it claims nothing.
  malformed            a row that cannot be read, with its line number and every problem.

The passes, most certain first: (1) reference: ``external_ref`` is the exchange id or its
transaction id, and that exchange has a pair with the record's provider and receiver;
(2) same parties and minutes, date within tolerance; (3) same parties, date within tolerance,
other minutes (amount mismatch); (4) same parties and minutes, date beyond tolerance (date
mismatch). Within a pass the pair closest in date wins.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.ids import parse_id
from app.models import Exchange, ExchangeParty, Member, User
from app.models.exchanges import ExchangeStatus, PartyRole, Resolution

REQUIRED_COLUMNS = ("external_ref", "date", "provider", "receiver", "minutes")
MAX_ROWS = 100_000
# How far beyond the tolerance a record without reference may be dated and still be reported as
# a date mismatch of the pair with its parties and minutes (rather than missing).
DATE_MISMATCH_DAYS = 31
RESULT_KINDS = (
    "matched",
    "amount_mismatches",
    "date_mismatches",
    "missing_from_ledger",
    "missing_from_file",
    "duplicates",
    "malformed",
)


class ExternalFileError(ValueError):
    """The file as a whole cannot be read (no header, wrong columns, not text)."""


@dataclass(frozen=True)
class Record:
    line: int
    external_ref: str
    day: date
    provider: uuid.UUID
    receiver: uuid.UUID
    minutes: int
    note: str


@dataclass(frozen=True)
class LedgerPair:
    exchange_id: uuid.UUID
    transaction_id: uuid.UUID | None
    day: date
    provider: uuid.UUID
    receiver: uuid.UUID
    minutes: int


@dataclass
class MatchResult:
    rows: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {k: [] for k in RESULT_KINDS}
    )

    @property
    def summary(self) -> dict[str, int]:
        return {kind: len(items) for kind, items in self.rows.items()}


async def _member_lookup(
    session: AsyncSession, community_id: uuid.UUID
) -> tuple[dict[str, uuid.UUID], set[uuid.UUID]]:
    rows = await session.execute(
        select(Member.id, User.email)
        .outerjoin(User, User.id == Member.user_id)
        .where(Member.community_id == community_id)
    )
    by_email: dict[str, uuid.UUID] = {}
    ids: set[uuid.UUID] = set()
    for member_id, email in rows:
        ids.add(member_id)
        if email:
            by_email[email.lower()] = member_id
    return by_email, ids


def _resolve(value: str, by_email: dict[str, uuid.UUID], ids: set[uuid.UUID]) -> uuid.UUID | None:
    value = value.strip()
    parsed = parse_id(value)
    if parsed is not None and parsed in ids:
        return parsed
    return by_email.get(value.lower())


def not_csv(reader: csv.DictReader[str], error: csv.Error) -> ExternalFileError:
    """A file the csv module cannot read on: refused whole, naming where it stopped."""
    where = f"after line {reader.line_num}" if reader.line_num else "in its first line"
    return ExternalFileError(f"The file is not valid CSV {where}: {error}.")


def _rows(reader: csv.DictReader[str]) -> Iterator[dict[str, str]]:
    """The reader's rows; a line the csv module cannot read refuses the file (a 422 that
    names it), never a 500 nor a row skipped in silence."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise not_csv(reader, exc) from exc


def parse_records(
    content: str, by_email: dict[str, uuid.UUID], ids: set[uuid.UUID], result: MatchResult
) -> list[Record]:
    # newline="": the csv module reads line ends itself (a bare CR inside a field is then the
    # field's, not a broken line).
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        raise not_csv(reader, exc) from exc
    if fieldnames is None:
        raise ExternalFileError("The file is empty; expected a header row.")
    header = [h.strip().lower() for h in fieldnames]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ExternalFileError(
            f"Missing column(s): {', '.join(missing)}. Expected {', '.join(REQUIRED_COLUMNS)}, note."
        )
    reader.fieldnames = header
    records: list[Record] = []
    for raw in _rows(reader):
        line = reader.line_num
        if len(records) + len(result.rows["malformed"]) >= MAX_ROWS:
            raise ExternalFileError(f"At most {MAX_ROWS} rows per file.")
        problems = []
        ref = (raw.get("external_ref") or "").strip()
        if not ref:
            problems.append("external_ref is empty")
        try:
            day = date.fromisoformat((raw.get("date") or "").strip())
        except ValueError:
            problems.append(f"date {raw.get('date')!r} is not YYYY-MM-DD")
            day = date.min
        provider = _resolve(raw.get("provider") or "", by_email, ids)
        receiver = _resolve(raw.get("receiver") or "", by_email, ids)
        if provider is None:
            problems.append(
                f"provider {raw.get('provider')!r} is not a member id or email of this community"
            )
        if receiver is None:
            problems.append(
                f"receiver {raw.get('receiver')!r} is not a member id or email of this community"
            )
        minutes_text = (raw.get("minutes") or "").strip()
        minutes = int(minutes_text) if minutes_text.isdigit() else -1
        if minutes <= 0:
            problems.append(f"minutes {minutes_text!r} is not a whole number above 0")
        if None in raw:  # more cells than header columns
            problems.append("the row has more cells than the header")
        if problems:
            result.rows["malformed"].append(
                {"line": line, "external_ref": ref or None, "problems": problems}
            )
            continue
        assert provider is not None
        assert receiver is not None
        records.append(
            Record(line, ref, day, provider, receiver, minutes, (raw.get("note") or "").strip())
        )
    return records


_POSTED = (
    ExchangeStatus.confirmed.value,
    ExchangeStatus.disputed.value,
    ExchangeStatus.resolved.value,
)
_IDS_PER_QUERY = 5000  # bound the parameters of one statement (asyncpg allows 32,767)


async def ledger_pairs(
    session: AsyncSession,
    community_id: uuid.UUID,
    first: date,
    last: date,
    referenced: Sequence[uuid.UUID] = (),
) -> list[LedgerPair]:
    """Posted, non-reversed exchanges dated in [first, last] or named in ``referenced`` (by
    exchange or transaction id, whatever their date), as provider -> receiver pairs with the
    minutes that passed between them."""
    columns = (
        Exchange.id,
        Exchange.transaction_id,
        Exchange.occurred_on,
        ExchangeParty.member_id,
        ExchangeParty.role,
        ExchangeParty.minutes,
    )
    base = (
        select(*columns)
        .join(ExchangeParty, ExchangeParty.exchange_id == Exchange.id)
        .where(
            Exchange.community_id == community_id,
            Exchange.status.in_(_POSTED),
            or_(Exchange.resolution.is_(None), Exchange.resolution != Resolution.reversed.value),
        )
    )
    statements = [base.where(Exchange.occurred_on >= first, Exchange.occurred_on <= last)]
    ids = sorted(set(referenced))
    for offset in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[offset : offset + _IDS_PER_QUERY]
        statements.append(
            base.where(or_(Exchange.id.in_(chunk), Exchange.transaction_id.in_(chunk)))
        )
    exchanges: dict[uuid.UUID, tuple[uuid.UUID | None, date]] = {}
    parties: dict[uuid.UUID, dict[tuple[uuid.UUID, str], int]] = defaultdict(dict)
    for stmt in statements:
        for exchange_id, transaction_id, day, member_id, role, minutes in await session.execute(
            stmt
        ):
            exchanges[exchange_id] = (transaction_id, day)
            parties[exchange_id][(member_id, role)] = minutes
    pairs = []
    for exchange_id, (transaction_id, day) in exchanges.items():
        people = parties[exchange_id]
        providers = [(m, n) for (m, role), n in people.items() if role == PartyRole.provider]
        receivers = [(m, n) for (m, role), n in people.items() if role == PartyRole.receiver]
        total = sum(n for _, n in providers) or 1
        for provider, given in providers:
            for receiver, received in receivers:
                # Each receiver's minutes, shared among providers by what each gave.
                minutes = round(received * given / total)
                pairs.append(
                    LedgerPair(exchange_id, transaction_id, day, provider, receiver, minutes)
                )
    return pairs


def _record_view(record: Record) -> dict[str, Any]:
    return {
        "line": record.line,
        "external_ref": record.external_ref,
        "date": record.day.isoformat(),
        "provider": str(record.provider),
        "receiver": str(record.receiver),
        "minutes": record.minutes,
        "note": record.note,
    }


def _pair_view(pair: LedgerPair) -> dict[str, Any]:
    return {
        "exchange_id": str(pair.exchange_id),
        "date": pair.day.isoformat(),
        "provider": str(pair.provider),
        "receiver": str(pair.receiver),
        "minutes": pair.minutes,
    }


def _differences(record: Record, pair: LedgerPair, window: timedelta) -> list[str]:
    found = []
    if pair.minutes != record.minutes:
        found.append("minutes")
    if abs(pair.day - record.day) > window:
        found.append("date")
    return found


def match(
    records: list[Record], pairs: list[LedgerPair], tolerance: int, result: MatchResult
) -> None:
    window = timedelta(days=tolerance)
    seen_refs: dict[str, Record] = {}
    seen_content: dict[tuple[date, uuid.UUID, uuid.UUID, int], Record] = {}
    unique: list[Record] = []
    for record in records:
        content = (record.day, record.provider, record.receiver, record.minutes)
        first = seen_refs.get(record.external_ref) or seen_content.get(content)
        if first is not None:
            result.rows["duplicates"].append(
                {**_record_view(record), "duplicate_of_line": first.line}
            )
            continue
        seen_refs[record.external_ref] = record
        seen_content[content] = record
        unique.append(record)

    by_ref: dict[tuple[str, uuid.UUID, uuid.UUID], LedgerPair] = {}
    by_parties: dict[tuple[uuid.UUID, uuid.UUID], list[LedgerPair]] = defaultdict(list)
    for pair in pairs:
        by_ref.setdefault((str(pair.exchange_id), pair.provider, pair.receiver), pair)
        if pair.transaction_id is not None:
            by_ref.setdefault((str(pair.transaction_id), pair.provider, pair.receiver), pair)
        by_parties[(pair.provider, pair.receiver)].append(pair)
    used: set[LedgerPair] = set()

    def claim(record: Record, pair: LedgerPair) -> None:
        used.add(pair)
        differences = _differences(record, pair, window)
        view: dict[str, Any] = {"record": _record_view(record), "ledger": _pair_view(pair)}
        if not differences:
            result.rows["matched"].append(view)
            return
        view["differences"] = differences
        kind = "amount_mismatches" if "minutes" in differences else "date_mismatches"
        result.rows[kind].append(view)

    def closest(record: Record, fits: Callable[[Record, LedgerPair], bool]) -> LedgerPair | None:
        candidates = [
            p
            for p in by_parties[(record.provider, record.receiver)]
            if p not in used and fits(record, p)
        ]
        return (
            min(candidates, key=lambda p: (abs(p.day - record.day), p.day)) if candidates else None
        )

    remaining: list[Record] = []
    for record in unique:  # (1) references
        referenced = by_ref.get(
            (_canonical_ref(record.external_ref), record.provider, record.receiver)
        )
        if referenced is not None and referenced not in used:
            claim(record, referenced)
        else:
            remaining.append(record)
    passes: list[Callable[[Record, LedgerPair], bool]] = [
        # (2) same minutes, date within tolerance
        lambda r, p: p.minutes == r.minutes and abs(p.day - r.day) <= window,
        # (3) date within tolerance, other minutes
        lambda r, p: abs(p.day - r.day) <= window,
        # (4) same minutes, date beyond tolerance but not by more than DATE_MISMATCH_DAYS
        lambda r, p: (
            p.minutes == r.minutes
            and abs(p.day - r.day) <= window + timedelta(days=DATE_MISMATCH_DAYS)
        ),
    ]
    for fits in passes:
        leftovers: list[Record] = []
        for record in remaining:
            found = closest(record, fits)
            if found is None:
                leftovers.append(record)
            else:
                claim(record, found)
        remaining = leftovers
    for record in remaining:
        result.rows["missing_from_ledger"].append(_record_view(record))
    if records:
        first_day = min(r.day for r in records) - window
        last_day = max(r.day for r in records) + window
        for pair in pairs:
            if pair not in used and first_day <= pair.day <= last_day:
                result.rows["missing_from_file"].append(_pair_view(pair))


def _canonical_ref(value: str) -> str:
    parsed = parse_id(value)
    return str(parsed) if parsed is not None else value


async def match_file(
    session: AsyncSession, community_id: uuid.UUID, content: str, tolerance_days: int
) -> MatchResult:
    result = MatchResult()
    by_email, ids = await _member_lookup(session, community_id)
    records = parse_records(content, by_email, ids, result)
    if records:
        reach = timedelta(days=tolerance_days + DATE_MISMATCH_DAYS)
        first = min(r.day for r in records) - reach
        last = max(r.day for r in records) + reach
        referenced = [i for i in (parse_id(r.external_ref) for r in records) if i is not None]
        pairs = await ledger_pairs(session, community_id, first, last, referenced)
    else:
        pairs = []
    match(records, pairs, tolerance_days, result)
    return result


def result_csv(result: MatchResult) -> str:
    """One row per outcome, flat, for a spreadsheet."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "outcome",
            "line",
            "external_ref",
            "date",
            "provider",
            "receiver",
            "minutes",
            "exchange_id",
            "ledger_date",
            "ledger_minutes",
            "detail",
        ]
    )
    for kind, items in result.rows.items():
        for item in items:
            record = item.get("record", item)
            ledger = item.get("ledger", item if kind == "missing_from_file" else {})
            if "duplicate_of_line" in item:
                detail = f"duplicate of line {item['duplicate_of_line']}"
            elif "differences" in item:
                detail = "differs in " + " and ".join(item["differences"])
            else:
                detail = "; ".join(item.get("problems", []))
            writer.writerow(
                [
                    kind,
                    record.get("line", ""),
                    _cell(record.get("external_ref") or ""),
                    record.get("date", "") if kind != "missing_from_file" else "",
                    record.get("provider", "") if kind != "missing_from_file" else "",
                    record.get("receiver", "") if kind != "missing_from_file" else "",
                    record.get("minutes", "") if kind != "missing_from_file" else "",
                    ledger.get("exchange_id", ""),
                    ledger.get("date", ""),
                    ledger.get("minutes", ""),
                    _cell(detail),
                ]
            )
    return buffer.getvalue()


def _cell(value: str) -> str:
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value
