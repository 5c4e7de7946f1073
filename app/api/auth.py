"""Bearer tokens: verifying them and, for development, issuing them. No HTTP here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from app.platform.config import Settings
from app.platform.errors import Unauthenticated

ADMIN_PERMISSION = "settings.update"
# Real tokens are a few hundred bytes; a huge one is refused before any base64 or JSON work on it.
MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True)
class Principal:
    sub: str
    permissions: frozenset[str]
    expires_at: float = float("inf")  # epoch seconds; a live connection ends then

    @property
    def actor(self) -> str:
        """How this user appears in `triggeredBy` and the activity log."""
        return f"user:{self.sub}"


def _verification_key(settings: Settings) -> str:
    if settings.jwt_algorithm.startswith("HS"):
        assert settings.jwt_secret is not None  # Settings refuses to build without one
        return settings.jwt_secret.get_secret_value()
    assert settings.jwt_public_key is not None
    return settings.jwt_public_key


def decode_token(token: str, settings: Settings) -> Principal:
    """Verify signature, algorithm, expiry and the required claims; raise Unauthenticated otherwise."""
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated(f"Invalid token: longer than {MAX_TOKEN_CHARS} characters", code="invalid_token")
    try:
        claims = jwt.decode(
            token,
            _verification_key(settings),
            # Only the configured algorithm: never `none`, never HS-with-a-public-key confusion.
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway_seconds,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("Token has expired", code="token_expired") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthenticated(f"Invalid token: {exc}", code="invalid_token") from exc
    permissions = claims.get("permissions", [])
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise Unauthenticated("Invalid token: permissions must be an array of strings", code="invalid_token")
    return Principal(sub=claims["sub"], permissions=frozenset(permissions), expires_at=float(claims["exp"]))


def issue_token(settings: Settings, *, sub: str, permissions: list[str], ttl: timedelta) -> str:
    """Sign a token with the configured key (HS secret, or JWT_PRIVATE_KEY for RS/ES)."""
    secret = settings.jwt_secret if settings.jwt_algorithm.startswith("HS") else settings.jwt_private_key
    key = None if secret is None else secret.get_secret_value()
    if not key:
        raise ValueError(f"JWT_PRIVATE_KEY is needed to sign {settings.jwt_algorithm} tokens")
    now = datetime.now(UTC)
    claims: dict[str, object] = {"sub": sub, "permissions": permissions, "iat": now, "exp": now + ttl}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    assert key is not None
    return jwt.encode(claims, key, algorithm=settings.jwt_algorithm)
