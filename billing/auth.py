"""Passwords (bcrypt), the password policy and JWT access tokens (HS256). No I/O."""
from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import bcrypt
import jwt

ALGORITHM = "HS256"
IAT_LEEWAY_SECONDS = 5  # processes of one deployment may see the shared test clock move a refresh apart
_COMMON_PASSWORDS = {"password", "password1", "password123", "12345678", "123456789", "qwerty123", "letmein1", "iloveyou"}


class InvalidToken(Exception):
    pass


def password_problems(password: str, *, min_length: int = 8, email: str | None = None) -> list[str]:
    """What is wrong with a password, as messages a user can act on (empty = acceptable)."""
    problems = []
    if len(password) < min_length:
        problems.append(f"must be at least {min_length} characters")
    if len(password.encode()) > 72:
        problems.append("must be at most 72 bytes (bcrypt limit)")
    if not any(c.isalpha() for c in password):
        problems.append("must contain a letter")
    if not any(c.isdigit() for c in password):
        problems.append("must contain a digit")
    if password.lower() in _COMMON_PASSWORDS:
        problems.append("is too common")
    if email and password.lower() == email.lower():
        problems.append("must not be the email address")
    return problems


def hash_password(password: str, rounds: int = 12) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, password_hash: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), password_hash.encode())
    except ValueError:
        return False


def create_token(user_id: UUID, secret: str, *, now: datetime, expires_in: timedelta) -> str:
    claims = {"sub": str(user_id), "iat": int(now.timestamp()), "exp": int((now + expires_in).timestamp()), "type": "access"}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# Tokens whose signature and claims already checked out, keyed by (secret, exact token string):
# HMAC verification and claim parsing cost more than the rest of a metering request. Only valid
# tokens enter, and expiry / issue time are still checked against the clock on every call.
_VERIFIED: dict[tuple[str, str], tuple[UUID, int, int]] = {}
_VERIFIED_MAX = 10_000


def _verify(token: str, secret: str) -> tuple[UUID, int, int]:
    """(user id, exp, iat) of a token signed with `secret`. Only HS256 is accepted, so alg=none and key confusion fail."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub"], "verify_exp": False, "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    if not isinstance(claims["exp"], int) or not isinstance(claims["iat"], int):
        raise InvalidToken("exp and iat must be integers")
    try:
        return UUID(claims["sub"]), claims["exp"], claims["iat"]
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidToken("bad subject") from exc


def decode_token(token: str, secret: str, *, now: datetime) -> UUID:
    """The user id of a valid token."""
    verified = _VERIFIED.get((secret, token))
    if verified is None:
        verified = _verify(token, secret)
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[(secret, token)] = verified
    user, exp, iat = verified
    # Expiry and issue time are checked against the injected clock, not the machine's, so the test
    # clock applies (a token issued after clock.advance() has an iat in the machine's future).
    if exp <= int(now.timestamp()):
        raise InvalidToken("token expired")
    if iat > int(now.timestamp()) + IAT_LEEWAY_SECONDS:
        raise InvalidToken("token issued in the future")
    return user
