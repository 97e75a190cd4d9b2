"""Passwords, access tokens, ids and cursors: the shared security and paging helpers."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from jose import jwt

from app.core.config import Settings
from app.core.errors import InvalidCursor
from app.core.ids import new_id, new_ids, parse_id
from app.core.pagination import decode_cursor, encode_cursor
from app.core.security import AccessClaims, PasswordService, TokenError, TokenService
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def fast_settings() -> Settings:
    return make_settings("sqlite+aiosqlite:///:memory:")


@pytest.fixture(scope="module")
def passwords(fast_settings: Settings) -> PasswordService:
    return PasswordService(fast_settings)


def test_a_password_verifies_against_its_hash_and_nothing_else(passwords: PasswordService) -> None:
    stored = passwords.hash("correct horse battery staple")
    assert "correct horse" not in stored
    assert stored.startswith("$argon2id$")
    assert passwords.verify(stored, "correct horse battery staple")
    assert not passwords.verify(stored, "correct horse battery stapler")
    assert passwords.hash("correct horse battery staple") != stored  # salted


@pytest.mark.parametrize("stored", [None, "", "not-a-hash", "$argon2id$v=19$garbage"])
def test_an_unknown_or_unusable_hash_never_verifies(
    passwords: PasswordService, stored: str | None
) -> None:
    assert not passwords.verify(stored, "correct horse battery staple")


def test_a_hash_made_with_other_cost_settings_still_verifies(passwords: PasswordService) -> None:
    # Raising the cost in production must not lock out existing users.
    stronger = PasswordService(
        make_settings("sqlite+aiosqlite:///:memory:", password_hash_time_cost=2)
    )
    assert passwords.verify(stronger.hash("s3cret-enough"), "s3cret-enough")


@pytest.fixture(scope="module")
def tokens(fast_settings: Settings) -> TokenService:
    return TokenService(fast_settings)


def test_an_access_token_round_trips_its_subject_and_scopes(tokens: TokenService) -> None:
    token = tokens.issue_access_token("user-1", frozenset({"ledger:read", "members:read"}))
    claims = tokens.decode_access_token(token)
    assert claims.subject == "user-1"
    assert claims.scopes == {"ledger:read", "members:read"}
    assert claims.expires_at - claims.issued_at == timedelta(seconds=tokens.access_ttl_seconds)


def test_a_verified_token_is_remembered_but_still_expires(
    fast_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = TokenService(fast_settings)
    token = tokens.issue_access_token("user-1", frozenset({"ledger:read"}))
    first = tokens.decode_access_token(token)
    verifications = 0
    verify = tokens._verify

    def counting(raw: str) -> AccessClaims:
        nonlocal verifications
        verifications += 1
        return verify(raw)

    monkeypatch.setattr(tokens, "_verify", counting)
    assert tokens.decode_access_token(token) == first
    assert verifications == 0  # answered from the cache
    # Any other text is verified afresh: a flipped signature character is refused.
    header, payload, signature = token.split(".")
    flipped = f"{header}.{payload}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}"
    flipped += signature[-1]
    with pytest.raises(TokenError, match="signature"):
        tokens.decode_access_token(flipped)
    assert verifications == 1
    # Past its expiry the remembered token is refused, and forgotten.
    later = first.expires_at.timestamp() + 1
    monkeypatch.setattr("app.core.security.time.time", lambda: later)
    with pytest.raises(TokenError, match="expired"):
        tokens.decode_access_token(token)
    assert token not in tokens._verified


def test_the_verified_token_cache_is_bounded(
    fast_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.core.security.VERIFIED_TOKEN_CACHE_SIZE", 3)
    tokens = TokenService(fast_settings)
    issued = [tokens.issue_access_token(f"user-{i}") for i in range(5)]
    for token in issued:
        tokens.decode_access_token(token)
    assert list(tokens._verified) == issued[2:]


def _forge(fast_settings: Settings, **changes: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": fast_settings.jwt_issuer,
        "aud": fast_settings.jwt_audience,
        "sub": "user-1",
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
        "typ": "access",
    }
    claims.update(changes)
    key = str(claims.pop("_key", fast_settings.secret_key.get_secret_value()))
    return str(jwt.encode({k: v for k, v in claims.items() if v is not None}, key, "HS256"))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": int(time.time()) - 10}, "expired"),
        ({"aud": "another-api"}, "claims"),
        ({"iss": "someone-else"}, "claims"),
        ({"typ": "refresh"}, "not an access token"),
        ({"_key": "a-different-secret-of-enough-length"}, "signature"),
        ({"iat": int(time.time()) + 3600}, "future"),
        ({"jti": None}, "claims"),
    ],
    ids=["expired", "audience", "issuer", "type", "signature", "future", "no-jti"],
)
def test_a_token_that_cannot_be_trusted_is_refused_with_a_reason(
    tokens: TokenService, fast_settings: Settings, changes: dict[str, object], reason: str
) -> None:
    with pytest.raises(TokenError, match=reason):
        tokens.decode_access_token(_forge(fast_settings, **changes))


def test_an_unsigned_token_is_refused(tokens: TokenService) -> None:
    good = tokens.issue_access_token("user-1")
    _, payload, _ = good.split(".")
    unsigned_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"  # {"alg":"none","typ":"JWT"}
    with pytest.raises(TokenError, match="algorithm"):
        tokens.decode_access_token(f"{unsigned_header}.{payload}.")
    with pytest.raises(TokenError, match="well-formed"):
        tokens.decode_access_token("not-a-jwt")


def test_ids_are_uuidv7_and_strictly_increasing() -> None:
    generated = [new_id() for _ in range(5000)]
    assert all(value.version == 7 for value in generated)
    assert all(value.variant == uuid.RFC_4122 for value in generated)
    assert generated == sorted(generated)
    assert len(set(generated)) == len(generated)


def test_ids_keep_their_order_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    before = new_id()
    # A clock stepped back to 2001 (NTP correction, VM restore).
    monkeypatch.setattr("app.core.ids.time.time_ns", lambda: 1_000_000_000 * 1_000_000_000)
    after = [new_id() for _ in range(5000)]  # more than one millisecond's counter holds
    assert [before, *after] == sorted([before, *after])
    assert len(set(after)) == len(after)


def test_ids_made_in_bulk_keep_order_with_single_ones_and_each_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = new_id()
    bulk = new_ids(3000)
    last = new_id()
    assert [first, *bulk, last] == sorted([first, *bulk, last])
    assert len({first, *bulk, last}) == 3002
    assert all(value.version == 7 and value.variant == uuid.RFC_4122 for value in bulk)
    # Bulk ids are not one random value repeated: each draws its own random bits.
    assert len({value.int & 0x3FFF_FFFF_FFFF_FFFF for value in bulk}) == len(bulk)
    # A frozen clock: more ids than one millisecond's counter holds, still in order.
    monkeypatch.setattr("app.core.ids.time.time_ns", lambda: 1_000_000_000 * 1_000_000_000)
    frozen = new_ids(5000)
    assert frozen == sorted(frozen)
    assert len(set(frozen)) == 5000


def test_ids_embed_their_creation_time() -> None:
    before_ms = time.time_ns() // 1_000_000
    value = new_id()
    embedded_ms = value.int >> 80
    assert before_ms <= embedded_ms < before_ms + 60_000


@pytest.mark.parametrize("raw", ["", "nope", "123", "0190d0a0-0000-7000-8000-00000000000Z"])
def test_a_malformed_client_id_parses_to_none(raw: str) -> None:
    assert parse_id(raw) is None


def test_a_cursor_round_trips_and_is_url_safe() -> None:
    last = new_id()
    cursor = encode_cursor([last, "2025-01-31", 42])
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_cursor(cursor) == [str(last), "2025-01-31", 42]


@pytest.mark.parametrize(
    "garbage",
    ["!!!", "not base64 at all", "e30", "bnVsbA", "eyJhIjoxfQ", "%%%", "\u00e9t\u00e9"],
    ids=["symbols", "spaces", "object", "null", "dict", "percent", "non-ascii"],
)
def test_a_cursor_the_server_did_not_issue_is_refused(garbage: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(garbage)
