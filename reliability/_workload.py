"""The clients: a realistic mix of member, coordinator and reader traffic, with every
money-moving write under an Idempotency-Key, and a record of what the server acknowledged.

Each client task owns one keep-alive connection and loops until the deadline, choosing an
operation by weight. People are chosen with hot spots (a few very busy members) and fixed
pairs that trade in both directions at once.

Writes are retried with the same key (and the same body) whenever they get no answer, a 5xx
or ``409 idempotency_in_progress``, until they are answered or ``give_up_at`` passes: the
server's idempotency makes the retry safe, and the harness counts every retry.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench._load import percentile
from reliability._http import Connection, Reply, Unanswered
from reliability._world import Person, World

CATEGORIES = ("companionship", "transport", "gardening", "shopping", "household")
HOT_MEMBERS = 3
PAIRS = 4
RETRY_BACKOFF = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)
# Operation -> weight: what a client does next (a Client method of that name).
MIX: dict[str, int] = {
    "exchange_pair": 28,  # propose 1:1; confirm (or reject / cancel); some disputed and reversed
    "exchange_group": 7,  # 1 provider, 2-4 receivers, equal split; receivers or a coordinator confirm
    "record": 4,  # a coordinator records an exchange at once
    "donation": 8,
    "grant": 6,
    "transfer": 12,  # a coordinator's transaction; 30 % then reversed
    "statement": 20,
    "connections": 10,
    "metrics": 5,
}


@dataclass(frozen=True)
class Sent:
    """A write as sent, kept so the final checks can send it again."""

    op: str
    method: str
    path: str
    body: bytes
    token: str
    key: str


@dataclass(frozen=True)
class Ack:
    """A posting the server acknowledged to a client (a 2xx on a write that posts)."""

    kind: str  # the transaction kind: exchange, donation, grant, transfer, reversal
    transaction_id: str
    sent: Sent | None  # None for a write without a key (resolve)


@dataclass
class Recorder:
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    outcomes: Counter[str] = field(default_factory=Counter)  # "op status code" of refusals
    unanswered: Counter[str] = field(default_factory=Counter)  # "op reason"
    server_errors: Counter[str] = field(default_factory=Counter)  # "op status code"
    retries: int = 0
    replays_checked: int = 0
    unresolved: list[str] = field(default_factory=list)  # writes never answered
    problems: list[str] = field(default_factory=list)  # wrong answers seen by clients
    acks: dict[str, Ack] = field(default_factory=dict)  # by idempotency key (or exchange)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + sum(self.unanswered.values())

    def answered(self, op: str, reply: Reply, seconds: float) -> None:
        self.latencies[op].append(seconds * 1000)
        if reply.status >= 500:
            self.server_errors[f"{op} {reply.status} {reply.code}"] += 1
        if reply.status >= 300:
            self.outcomes[f"{reply.status} {reply.code}"] += 1
        else:
            self.outcomes[f"{reply.status}"] += 1

    def ack(self, key: str, kind: str, transaction_id: Any, sent: Sent | None) -> None:
        if not isinstance(transaction_id, str) or not transaction_id:
            self.problems.append(f"{kind} acknowledged without a transaction id ({key})")
            return
        previous = self.acks.get(key)
        if previous is not None and previous.transaction_id != transaction_id:
            self.problems.append(
                f"key {key}: answered with transaction {previous.transaction_id}, "
                f"then {transaction_id}"
            )
        self.acks[key] = Ack(kind, transaction_id, sent)

    def acked_by_kind(self) -> Counter[str]:
        return Counter(a.kind for a in self.acks.values())

    def print(self) -> None:
        total_answered = sum(len(v) for v in self.latencies.values())
        seconds = self.seconds or 1.0
        print(
            f"requests: {self.requests:,} in {seconds:.1f} s = {self.requests / seconds:,.1f}/s"
            f" ({total_answered:,} answered, {sum(self.unanswered.values()):,} unanswered,"
            f" {self.retries:,} retries)"
        )
        print(f"{'operation':<14}{'count':>8}{'ops/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        for op in sorted(self.latencies):
            values = self.latencies[op]
            print(
                f"{op:<14}{len(values):>8,}{len(values) / seconds:>9.1f}"
                f"{percentile(values, 50):>9.1f}{percentile(values, 99):>9.1f}"
                f"{max(values):>9.1f}"
            )
        print("answers by status and code:")
        for outcome, n in sorted(self.outcomes.items()):
            print(f"  {outcome:<40}{n:>8,}")
        if self.unanswered:
            print("unanswered (connection error / timeout):")
            for reason, n in sorted(self.unanswered.items()):
                print(f"  {reason:<40}{n:>8,}")
        if self.server_errors:
            print("5xx answers:")
            for reason, n in sorted(self.server_errors.items()):
                print(f"  {reason:<40}{n:>8,}")
        kinds = self.acked_by_kind()
        print(
            "postings acknowledged: "
            + ", ".join(f"{k} {n:,}" for k, n in sorted(kinds.items()))
            + f" (total {sum(kinds.values()):,})"
        )


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class Client:
    """One simulated app: a connection, a random stream, the shared recorder."""

    def __init__(
        self,
        world: World,
        base_url: str,
        recorder: Recorder,
        rng: random.Random,
        *,
        timeout: float,
        give_up_at: float,
    ) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.world = world
        self.rec = recorder
        self.rng = rng
        self.timeout = timeout
        self.give_up_at = give_up_at
        self.conn = Connection(host, self.port, timeout)
        members = world.members
        self.hot = members[:HOT_MEMBERS]
        self.pairs = [
            (members[HOT_MEMBERS + 2 * i], members[HOT_MEMBERS + 2 * i + 1]) for i in range(PAIRS)
        ]

    # --- requests -----------------------------------------------------------------------

    async def read(self, op: str, path: str, token: str) -> Reply | None:
        t0 = time.monotonic()
        try:
            reply = await self.conn.request("GET", path, token=token)
        except Unanswered as exc:
            self.rec.unanswered[f"{op} {exc}"] += 1
            await asyncio.sleep(0.2)  # the server may be restarting: do not spin
            return None
        self.rec.answered(op, reply, time.monotonic() - t0)
        return reply

    async def write(
        self,
        op: str,
        path: str,
        token: str,
        payload: object,
        *,
        key: str | None,
        conn: Connection | None = None,
    ) -> tuple[Reply | None, Sent]:
        """POST; with a key, retried until answered (not 5xx, not in progress)."""
        connection = conn or self.conn
        body = _dumps(payload)
        sent = Sent(op, "POST", path, body, token, key or "")
        for attempt in range(10_000):
            if attempt:
                self.rec.retries += 1
                await asyncio.sleep(RETRY_BACKOFF[min(attempt - 1, len(RETRY_BACKOFF) - 1)])
            t0 = time.monotonic()
            reply: Reply | None
            try:
                reply = await connection.request("POST", path, token=token, body=body, key=key)
            except Unanswered as exc:
                self.rec.unanswered[f"{op} {exc}"] += 1
                reply = None
            else:
                self.rec.answered(op, reply, time.monotonic() - t0)
            retry = (
                reply is None
                or reply.status >= 500
                or (reply.status == 409 and reply.code == "idempotency_in_progress")
            )
            if not retry or key is None:
                return reply, sent
            if time.monotonic() > self.give_up_at:
                self.rec.unresolved.append(f"{op} {path} key={key}")
                return None, sent
        return None, sent  # pragma: no cover - bounded by give_up_at long before

    # --- choosing people ----------------------------------------------------------------

    def pick_two(self) -> tuple[Person, Person]:
        r = self.rng.random()
        members = self.world.members
        if r < 0.25:
            a, b = self.rng.choice(self.pairs)
        elif r < 0.55:
            a = self.rng.choice(self.hot)
            b = self.rng.choice([m for m in members if m is not a])
        else:
            a, b = self.rng.sample(members, 2)
        return (a, b) if self.rng.random() < 0.5 else (b, a)

    def anyone(self) -> Person:
        if self.rng.random() < 0.3:
            return self.rng.choice(self.hot)
        return self.rng.choice(self.world.members)

    # --- operations ---------------------------------------------------------------------

    def _exchange(
        self, providers: Sequence[tuple[Person, int]], receivers: Sequence[Person], equal: bool
    ) -> dict[str, object]:
        total = sum(m for _, m in providers)
        return {
            "providers": [{"member_id": p.member_id, "minutes": m} for p, m in providers],
            "receivers": [
                {"member_id": r.member_id}
                if equal
                else {"member_id": r.member_id, "minutes": total}
                for r in receivers
            ],
            "split": "equal" if equal else "explicit",
            "description": f"soak {uuid.uuid4().hex[:8]}",
            "category": self.rng.choice(CATEGORIES),
            "occurred_on": datetime.now(UTC).date().isoformat(),
        }

    async def exchange_pair(self) -> None:
        provider, receiver = self.pick_two()
        proposer, counterparty = (
            (provider, receiver) if self.rng.random() < 0.5 else (receiver, provider)
        )
        body = self._exchange([(provider, self.rng.randint(15, 180))], [receiver], equal=False)
        cid = self.world.community_id
        reply, _ = await self.write(
            "propose", f"/v1/communities/{cid}/exchanges", proposer.token, body, key=_key()
        )
        if reply is None or reply.status != 201:
            return
        exchange_id = str(reply.json()["id"])
        roll = self.rng.random()
        if roll < 0.06:
            await self.write(
                "reject", f"/v1/exchanges/{exchange_id}/reject", counterparty.token, {}, key=None
            )
            return
        if roll < 0.12:
            await self.write(
                "cancel", f"/v1/exchanges/{exchange_id}/cancel", proposer.token, {}, key=None
            )
            return
        key = _key()
        confirm: dict[str, object] = {}
        if counterparty is receiver and self.rng.random() < 0.3:
            confirm["thanks"] = "thank you"
        reply, sent = await self.write(
            "confirm", f"/v1/exchanges/{exchange_id}/confirm", counterparty.token, confirm, key=key
        )
        if reply is None:
            return
        if reply.status == 200:
            data = reply.json()
            if data["status"] == "confirmed":
                self.rec.ack(key, "exchange", data["transaction_id"], sent)
            if self.rng.random() < 0.05:
                await self.replay(sent, reply)
            if data["status"] == "confirmed" and self.rng.random() < 0.04:
                await self.dispute_and_reverse(exchange_id, receiver)
        elif reply.status == 409:  # a limit refused it: it stays proposed; withdraw it
            await self.write(
                "cancel", f"/v1/exchanges/{exchange_id}/cancel", proposer.token, {}, key=None
            )

    async def exchange_group(self) -> None:
        provider = self.anyone()
        others = [m for m in self.world.members if m is not provider]
        receivers = self.rng.sample(others, self.rng.randint(2, 4))
        minutes = self.rng.randint(30, 180)
        body = self._exchange([(provider, minutes)], receivers, equal=True)
        cid = self.world.community_id
        reply, _ = await self.write(
            "propose_group", f"/v1/communities/{cid}/exchanges", provider.token, body, key=_key()
        )
        if reply is None or reply.status != 201:
            return
        exchange_id = str(reply.json()["id"])
        path = f"/v1/exchanges/{exchange_id}/confirm"
        roll = self.rng.random()
        if roll < 0.3:  # a coordinator confirms for the group
            key = _key()
            answer, sent = await self.write(
                "confirm_group", path, self.world.coord.token, {}, key=key
            )
            answers = [(key, answer, sent)]
        else:  # every receiver confirms their own share at the same time (and, now and
            # then, a coordinator confirms for the group at that very moment too)
            confirmers = [r.token for r in receivers]
            if roll < 0.4:
                confirmers.append(self.world.coord.token)
            connections = [Connection(self.host, self.port, self.timeout) for _ in confirmers]
            try:
                keys = [_key() for _ in confirmers]
                results = await asyncio.gather(
                    *(
                        self.write("confirm_group", path, token, {}, key=k, conn=c)
                        for token, k, c in zip(confirmers, keys, connections, strict=True)
                    )
                )
            finally:
                for c in connections:
                    await c.close()
            answers = [(k, a, s) for k, (a, s) in zip(keys, results, strict=True)]
        posted = refused = False
        for key, answer, sent in answers:
            if answer is not None and answer.status == 200:
                data = answer.json()
                if data["status"] == "confirmed":
                    posted = True
                    self.rec.ack(key, "exchange", data["transaction_id"], sent)
            elif (
                answer is not None
                and answer.status == 409
                and answer.code
                in {
                    "insufficient_balance",
                    "over_balance_cap",
                }
            ):
                refused = True
        if not posted and refused:
            await self.write(
                "cancel", f"/v1/exchanges/{exchange_id}/cancel", provider.token, {}, key=None
            )

    async def record(self) -> None:
        provider, receiver = self.pick_two()
        body = self._exchange([(provider, self.rng.randint(15, 120))], [receiver], equal=False)
        body["mode"] = "record"
        key = _key()
        cid = self.world.community_id
        reply, sent = await self.write(
            "record", f"/v1/communities/{cid}/exchanges", self.world.coord.token, body, key=key
        )
        if reply is not None and reply.status == 201:
            self.rec.ack(key, "exchange", reply.json()["transaction_id"], sent)

    async def dispute_and_reverse(self, exchange_id: str, receiver: Person) -> None:
        reply, _ = await self.write(
            "dispute",
            f"/v1/exchanges/{exchange_id}/dispute",
            receiver.token,
            {"note": "not as agreed"},
            key=None,
        )
        if reply is None or reply.status != 200:
            return
        # /resolve takes no Idempotency-Key: on no answer, read the exchange to learn the outcome.
        path = f"/v1/exchanges/{exchange_id}/resolve"
        payload = {"outcome": "reversed", "note": "reversed by the coordinator"}
        for _ in range(100):
            reply, _ = await self.write("resolve", path, self.world.coord.token, payload, key=None)
            if reply is not None and reply.status < 500:
                break
            if time.monotonic() > self.give_up_at:
                break
            await asyncio.sleep(0.5)
        state = await self._exchange_state(exchange_id)
        if state is None:
            self.rec.unresolved.append(f"resolve of {exchange_id}: outcome unknown")
        elif state.get("reversal_transaction_id"):
            self.rec.ack(
                f"resolve:{exchange_id}", "reversal", state["reversal_transaction_id"], None
            )

    async def _exchange_state(self, exchange_id: str) -> dict[str, Any] | None:
        while time.monotonic() <= self.give_up_at:
            reply = await self.read(
                "get_exchange", f"/v1/exchanges/{exchange_id}", self.world.coord.token
            )
            if reply is not None and reply.status == 200:
                data: dict[str, Any] = reply.json()
                return data
            await asyncio.sleep(0.5)
        return None

    async def donation(self) -> None:
        donor = self.anyone()
        key = _key()
        cid = self.world.community_id
        body = {"minutes": self.rng.randint(15, 120), "note": "for the chest"}
        reply, sent = await self.write(
            "donation", f"/v1/communities/{cid}/donations", donor.token, body, key=key
        )
        if reply is not None and reply.status == 201:
            self.rec.ack(key, "donation", reply.json()["id"], sent)
            if self.rng.random() < 0.05:
                await self.replay(sent, reply)

    async def grant(self) -> None:
        body = {
            "member_id": self.anyone().member_id,
            "minutes": self.rng.randint(15, 90),
            "reason": "soak grant",
        }
        key = _key()
        cid = self.world.community_id
        reply, sent = await self.write(
            "grant", f"/v1/communities/{cid}/grants", self.world.coord.token, body, key=key
        )
        if reply is not None and reply.status == 201:
            self.rec.ack(key, "grant", reply.json()["id"], sent)

    async def transfer(self) -> None:
        a, b = self.pick_two()
        minutes = self.rng.randint(5, 120)
        body = {
            "kind": "transfer",
            "entries": [
                {"account_id": a.account_id, "minutes": minutes},
                {"account_id": b.account_id, "minutes": -minutes},
            ],
            "memo": "soak transfer",
        }
        key = _key()
        cid = self.world.community_id
        reply, sent = await self.write(
            "transfer", f"/v1/communities/{cid}/transactions", self.world.coord.token, body, key=key
        )
        if reply is None or reply.status != 201:
            return
        data = reply.json()
        if not all(isinstance(e.get("minutes"), int) for e in data.get("entries", [])):
            self.rec.problems.append(f"transfer {data.get('id')}: minutes not integers")
        self.rec.ack(key, "transfer", data["id"], sent)
        if self.rng.random() < 0.05:
            await self.replay(sent, reply)
        if self.rng.random() < 0.3:
            key = _key()
            reply, sent = await self.write(
                "reversal",
                f"/v1/transactions/{data['id']}/reversal",
                self.world.coord.token,
                {"memo": "entered twice"},
                key=key,
            )
            if reply is not None and reply.status == 201:
                self.rec.ack(key, "reversal", reply.json()["id"], sent)

    async def statement(self) -> None:
        if self.rng.random() < 0.7:
            who = self.anyone()
            await self.read(
                "statement", f"/v1/accounts/{who.account_id}/entries?limit=20", who.token
            )
        else:
            account = self.rng.choice(self.hot).account_id
            path = f"/v1/accounts/{account}/entries?limit=50"
            await self.read("statement", path, self.world.coord.token)

    async def connections(self) -> None:
        who = self.anyone()
        await self.read("connections", f"/v1/members/{who.member_id}/connections", who.token)

    async def metrics(self) -> None:
        path = f"/v1/communities/{self.world.community_id}/network/metrics"
        await self.read("metrics", path, self.world.coord.token)

    async def replay(self, sent: Sent, first: Reply) -> None:
        """A double submit: the same key and body must replay the first answer exactly."""
        reply, _ = await self.write(
            "replay", sent.path, sent.token, json.loads(sent.body), key=sent.key
        )
        self.rec.replays_checked += 1
        if reply is None:
            return
        if not reply.replayed or reply.status != first.status or reply.body != first.body:
            self.rec.problems.append(
                f"replay of {sent.op} key={sent.key}: {reply.status} replayed={reply.replayed}"
                f" (first {first.status})"
            )

    async def run(self, stop_at: float, mix: dict[str, int]) -> None:
        functions: list[Callable[[], Awaitable[None]]] = [getattr(self, n) for n in mix]
        weights = list(mix.values())
        try:
            while time.monotonic() < stop_at:
                await self.rng.choices(functions, weights)[0]()
        finally:
            await self.conn.close()


def _key() -> str:
    return uuid.uuid4().hex


async def run_clients(
    world: World,
    base_url: str,
    *,
    clients: int,
    duration: float,
    seed: int,
    request_timeout: float,
    grace: float,
    recorder: Recorder | None = None,
    mix: dict[str, int] | None = None,
) -> Recorder:
    """``clients`` concurrent clients for ``duration`` seconds; in-flight operations then
    finish (retrying for at most ``grace`` more seconds)."""
    rec = recorder or Recorder()
    start = time.monotonic()
    stop_at = start + duration
    tasks = [
        Client(
            world,
            base_url,
            rec,
            random.Random(seed * 1000 + i),
            timeout=request_timeout,
            give_up_at=stop_at + grace,
        ).run(stop_at, mix or MIX)
        for i in range(clients)
    ]
    await asyncio.gather(*tasks)
    rec.seconds = time.monotonic() - start
    return rec
