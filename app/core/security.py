"""Passwords (argon2id), access tokens (JWT, python-jose) and opaque secrets."""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from jose import JWTError, jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError

from app.core.clock import utcnow
from app.core.config import Settings

# One explicit allow-list: a token naming any other algorithm ("none", RS256 with our
# secret as a public key, ...) is refused before its signature is looked at.
JWT_ALGORITHM = "HS256"
JWT_ALGORITHMS = [JWT_ALGORITHM]
ACCESS_TOKEN_TYPE = "access"  # noqa: S105 - a claim value, not a secret
VERIFIED_TOKEN_CACHE_SIZE = 4096  # tokens in use at once per worker, most recent kept


class PasswordService:
    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.password_hash_time_cost,
            memory_cost=settings.password_hash_memory_kib,
            parallelism=settings.password_hash_parallelism,
        )

    @functools.cached_property
    def _dummy_hash(self) -> str:
        """Verified against when the account does not exist, so timing does not tell. Made on
        first use: hashing costs ``memory_cost`` of RAM, which a worker need not spend at start."""
        return self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy_hash, password) and (
                password_hash is not None
            )
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


@dataclass(frozen=True)
class AccessClaims:
    subject: str
    token_id: str
    issued_at: datetime
    expires_at: datetime
    scopes: frozenset[str]


class TokenError(Exception):
    """The bearer token cannot be trusted; the message says why (for logs and problem detail)."""


class TokenService:
    def __init__(self, settings: Settings) -> None:
        self._secret = settings.secret_key.get_secret_value()
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._ttl = timedelta(seconds=settings.access_token_ttl_seconds)
        self._verified: OrderedDict[str, AccessClaims] = OrderedDict()

    @property
    def access_ttl_seconds(self) -> int:
        return int(self._ttl.total_seconds())

    def issue_access_token(self, subject: str, scopes: frozenset[str] = frozenset()) -> str:
        now = utcnow()
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": subject,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + self._ttl).timestamp()),
            "jti": uuid.uuid4().hex,
            "typ": ACCESS_TOKEN_TYPE,
        }
        if scopes:
            claims["scope"] = " ".join(sorted(scopes))
        return str(jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM))

    def decode_access_token(self, token: str) -> AccessClaims:
        """The claims of a valid access token, or ``TokenError`` saying why it is refused.

        A token verified before is answered from a bounded cache keyed by its exact text (every
        authenticated request presents one, and verifying costs more than a database round
        trip); only its expiry can change, and that is checked again on every use.
        """
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify(token)
            self._verified[token] = claims
            if len(self._verified) > VERIFIED_TOKEN_CACHE_SIZE:
                self._verified.popitem(last=False)
        elif claims.expires_at.timestamp() < time.time():
            del self._verified[token]
            raise TokenError("the token has expired")
        else:
            self._verified.move_to_end(token)
        return claims

    def _verify(self, token: str) -> AccessClaims:
        try:
            header = jwt.get_unverified_header(token)
        except JWTError as exc:
            raise TokenError("the token is not a well-formed JWT") from exc
        if header.get("alg") not in JWT_ALGORITHMS:
            raise TokenError("the token's signing algorithm is not accepted")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=JWT_ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require_exp": True,
                    "require_iat": True,
                    "require_aud": True,
                    "require_iss": True,
                    "require_sub": True,
                    "require_jti": True,
                },
            )
        except ExpiredSignatureError as exc:
            raise TokenError("the token has expired") from exc
        except JWTClaimsError as exc:
            raise TokenError(f"the token's claims are not valid: {exc}") from exc
        except JWTError as exc:
            # jose reports a missing required claim with the bare JWTError it also uses for a
            # bad signature; say which, so a partner debugging a 401 is not sent the wrong way.
            if "missing required key" in str(exc):
                raise TokenError(f"the token's claims are not valid: {exc}") from exc
            raise TokenError("the token's signature is not valid") from exc
        if claims.get("typ") != ACCESS_TOKEN_TYPE:
            raise TokenError("the token is not an access token")
        iat = claims["iat"]
        if not isinstance(iat, int) or iat > int(utcnow().timestamp()) + 60:
            raise TokenError("the token was issued in the future")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise TokenError("the token's scope claim is not a string")
        return AccessClaims(
            subject=str(claims["sub"]),
            token_id=str(claims["jti"]),
            issued_at=datetime.fromtimestamp(iat, tz=utcnow().tzinfo),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), tz=utcnow().tzinfo),
            scopes=frozenset(scope.split()),
        )


def new_opaque_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def sha256_hex(value: str) -> str:
    """Refresh tokens and client secrets carry 256 bits of entropy: a fast hash is enough
    (there is nothing to brute-force), and lookups by hash stay indexable."""
    return hashlib.sha256(value.encode()).hexdigest()


def constant_time_equals(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())
