"""Match an external record file (a GP practice's volunteer log, a council's timesheets, an
export from a previous system) against the exchanges posted in the ledger.

CSV columns (header row required; order free; extra columns ignored):

  external_ref   the record's own id (required, unique within the file)
  date           YYYY-MM-DD, the date of service
  provider       member id or the member's login email
  receiver       member id or the member's login email
  minutes        whole minutes > 0
  note           free text (optional)

A record matches an exchange one-to-one by reference (the exchange id or its transaction id);
otherwise by provider, receiver and minutes with the date within a tolerance (default 3 days).
Each ledger exchange is matched at most once.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.ids import parse_id
from app.models import Exchange, ExchangeParty, Member, User
from app.models.exchanges import ExchangeStatus, PartyRole, Resolution

REQUIRED_COLUMNS = ("external_ref", "date", "provider", "receiver", "minutes")
MAX_ROWS = 100_000
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


def parse_records(
    content: str, by_email: dict[str, uuid.UUID], ids: set[uuid.UUID], result: MatchResult
) -> list[Record]:
    reader = csv.DictReader(io.StringIO(content))
    if reader.fieldnames is None:
        raise ExternalFileError("The file is empty; expected a header row.")
    header = [h.strip().lower() for h in reader.fieldnames]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ExternalFileError(
            f"Missing column(s): {', '.join(missing)}. Expected {', '.join(REQUIRED_COLUMNS)}, note."
        )
    reader.fieldnames = header
    records: list[Record] = []
    for raw in reader:
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


async def ledger_pairs(
    session: AsyncSession, community_id: uuid.UUID, first: date, last: date
) -> list[LedgerPair]:
    """Posted, non-reversed exchanges in the window, as provider -> receiver pairs with the
    minutes that passed between them."""
    exchanges = list(
        await session.scalars(
            select(Exchange).where(
                Exchange.community_id == community_id,
                Exchange.status.in_(
                    (
                        ExchangeStatus.confirmed.value,
                        ExchangeStatus.disputed.value,
                        ExchangeStatus.resolved.value,
                    )
                ),
                Exchange.occurred_on >= first,
                Exchange.occurred_on <= last,
            )
        )
    )
    exchanges = [e for e in exchanges if e.resolution != Resolution.reversed.value]
    if not exchanges:
        return []
    parties: dict[uuid.UUID, list[ExchangeParty]] = defaultdict(list)
    for party in await session.scalars(
        select(ExchangeParty).where(ExchangeParty.exchange_id.in_([e.id for e in exchanges]))
    ):
        parties[party.exchange_id].append(party)
    pairs = []
    for exchange in exchanges:
        providers = [p for p in parties[exchange.id] if p.role == PartyRole.provider]
        receivers = [p for p in parties[exchange.id] if p.role == PartyRole.receiver]
        total = sum(p.minutes for p in providers) or 1
        for provider in providers:
            for receiver in receivers:
                # Each receiver's minutes, shared among providers by what each gave.
                minutes = round(receiver.minutes * provider.minutes / total)
                pairs.append(
                    LedgerPair(
                        exchange.id,
                        exchange.transaction_id,
                        exchange.occurred_on,
                        provider.member_id,
                        receiver.member_id,
                        minutes,
                    )
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

    by_ref: dict[str, LedgerPair] = {}
    by_parties: dict[tuple[uuid.UUID, uuid.UUID], list[LedgerPair]] = defaultdict(list)
    for pair in pairs:
        by_ref.setdefault(str(pair.exchange_id), pair)
        if pair.transaction_id is not None:
            by_ref.setdefault(str(pair.transaction_id), pair)
        by_parties[(pair.provider, pair.receiver)].append(pair)
    used: set[LedgerPair] = set()

    def claim(record: Record, pair: LedgerPair) -> None:
        used.add(pair)
        view = {"record": _record_view(record), "ledger": _pair_view(pair)}
        if pair.minutes != record.minutes:
            result.rows["amount_mismatches"].append(view)
        elif abs(pair.day - record.day) > window:
            result.rows["date_mismatches"].append(view)
        else:
            result.rows["matched"].append(view)

    unmatched: list[Record] = []
    for record in unique:  # first pass: references
        referenced = by_ref.get(record.external_ref)
        if referenced is not None and referenced not in used:
            claim(record, referenced)
        else:
            unmatched.append(record)
    leftovers: list[Record] = []
    for record in unmatched:  # second pass: exact parties, minutes and a date within tolerance
        candidates = [
            p
            for p in by_parties[(record.provider, record.receiver)]
            if p not in used and p.minutes == record.minutes and abs(p.day - record.day) <= window
        ]
        if candidates:
            claim(record, min(candidates, key=lambda p: abs(p.day - record.day)))
        else:
            leftovers.append(record)
    for record in leftovers:  # third pass: same parties, close date, other minutes
        candidates = [
            p
            for p in by_parties[(record.provider, record.receiver)]
            if p not in used and abs(p.day - record.day) <= window
        ]
        if candidates:
            claim(record, min(candidates, key=lambda p: abs(p.day - record.day)))
        else:
            result.rows["missing_from_ledger"].append(_record_view(record))
    for pair in pairs:
        if pair not in used:
            result.rows["missing_from_file"].append(_pair_view(pair))


async def match_file(
    session: AsyncSession, community_id: uuid.UUID, content: str, tolerance_days: int
) -> MatchResult:
    result = MatchResult()
    by_email, ids = await _member_lookup(session, community_id)
    records = parse_records(content, by_email, ids, result)
    if records:
        window = timedelta(days=tolerance_days)
        first = min(r.day for r in records) - window
        last = max(r.day for r in records) + window
        pairs = await ledger_pairs(session, community_id, first, last)
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
            detail = "; ".join(item.get("problems", [])) or (
                f"duplicate of line {item['duplicate_of_line']}"
                if "duplicate_of_line" in item
                else ""
            )
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
