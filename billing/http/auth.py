"""POST /v1/auth/register, POST /v1/auth/login, GET /v1/auth/me."""
from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime, timedelta
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ConfigDict, EmailStr, Field

from billing import auth
from billing.http.api import Reply, Routes
from billing.http.context import CLOCK, POOL, REDIS, SETTINGS, user_id
from billing.http.errors import Conflict, NotFound, TooManyRequests, Unauthorized, ValidationFailed
from billing.sql import users

routes = Routes("auth")

# Compared against when the email is unknown, so a wrong email costs as much time as a wrong password.
_DUMMY_HASH = auth.hash_password("dummy-password-0", rounds=4)


class Register(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    email: EmailStr = Field(max_length=254)
    password: str = Field(min_length=1, max_length=128)
    first_name: str | None = Field(None, max_length=100)
    last_name: str | None = Field(None, max_length=100)


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    email: EmailStr = Field(max_length=254)
    password: str = Field(min_length=1, max_length=128)


class UserOut(BaseModel):
    id: UUID
    email: str
    first_name: str | None
    last_name: str | None
    is_active: bool
    created_at: datetime


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    user: UserOut


def _user(row) -> UserOut:
    return UserOut(**{k: row[k] for k in UserOut.model_fields})


async def _token(request: web.Request, row) -> TokenOut:
    settings = request.app[SETTINGS]
    expires_in = timedelta(minutes=settings.jwt_expiry_minutes)
    token = auth.create_token(row["id"], settings.jwt_secret.get_secret_value(), now=request.app[CLOCK].now(), expires_in=expires_in)
    return TokenOut(access_token=token, expires_in=int(expires_in.total_seconds()), user=_user(row))


async def _in_thread(fn, *args):
    # bcrypt is deliberately slow: keep it off the event loop.
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@routes.post("/v1/auth/register", body=Register, response=TokenOut, status=201, auth=False, errors=(409, 422),
             summary="Register a user and get an access token")
async def register(request: web.Request, body: Register):
    settings = request.app[SETTINGS]
    problems = auth.password_problems(body.password, min_length=settings.password_min_length, email=body.email)
    if problems:
        raise ValidationFailed("password does not meet the policy",
                               [{"field": "password", "message": f"password {p}", "type": "password_policy"} for p in problems])
    password_hash = await _in_thread(auth.hash_password, body.password, settings.bcrypt_rounds)
    try:
        row = await users.create(request.app[POOL], email=body.email, password_hash=password_hash,
                                 first_name=body.first_name, last_name=body.last_name)
    except users.EmailTaken:
        raise Conflict("an account with this email already exists", code="email_taken") from None
    return Reply(await _token(request, row), "registered", 201)


def _attempts_key(request: web.Request, email: str) -> str:
    # Per email and client address; the email is hashed so no address sits in Redis in clear.
    digest = hashlib.sha256(email.lower().encode()).hexdigest()[:32]
    return request.app[SETTINGS].key("ratelimit", "login", digest, request.remote or "unknown")


@routes.post("/v1/auth/login", body=Login, response=TokenOut, auth=False, errors=(401, 422, 429),
             summary="Log in and get an access token")
async def login(request: web.Request, body: Login):
    settings, redis = request.app[SETTINGS], request.app[REDIS]
    key = _attempts_key(request, body.email)
    failures = int(await redis.get(key) or 0)
    if failures >= settings.login_max_attempts:
        retry_after = max(1, await redis.ttl(key))
        raise TooManyRequests("too many failed logins, try again later", {"retry_after": retry_after},
                              headers={"Retry-After": str(retry_after)})
    creds = await users.get_credentials(request.app[POOL], body.email)
    valid = await _in_thread(auth.verify_password, body.password, creds["password_hash"] if creds else _DUMMY_HASH)
    if not (creds and valid and creds["is_active"]):
        async with redis.pipeline(transaction=True) as pipe:
            # SET NX starts the window at the first failure; INCR counts within it.
            await pipe.set(key, 0, ex=settings.login_window_seconds, nx=True).incr(key).execute()
        raise Unauthorized("invalid email or password", code="invalid_credentials")
    await redis.delete(key)
    row = await users.get(request.app[POOL], creds["id"])
    return Reply(await _token(request, row), "logged in")


@routes.get("/v1/auth/me", response=UserOut, errors=(401,), summary="The authenticated user")
async def me(request: web.Request):
    row = await users.get(request.app[POOL], user_id(request))
    if row is None:
        raise NotFound("user not found")
    return _user(row)
