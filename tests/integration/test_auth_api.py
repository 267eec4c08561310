from datetime import timedelta

import jwt

from tests.conftest import register


async def test_register_login_me(sub_client):
    user = await register(sub_client, "Alice@Example.com")
    resp = await sub_client.get("/v1/auth/me", headers=user["headers"])
    body = await resp.json()
    assert resp.status == 200
    assert set(body) == {"success", "data", "message", "timestamp"}
    assert body["success"] is True and body["data"]["email"] == "Alice@example.com"
    assert "password_hash" not in body["data"]

    resp = await sub_client.post("/v1/auth/login", json={"email": "alice@example.com", "password": user["password"]})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["data"]["token_type"] == "bearer" and body["data"]["expires_in"] == 3600


async def test_duplicate_email_is_409_case_insensitively(sub_client):
    await register(sub_client, "bob@example.com")
    resp = await sub_client.post("/v1/auth/register", json={"email": "BOB@example.com", "password": "an0ther-Pass"})
    body = await resp.json()
    assert resp.status == 409 and body["success"] is False and body["code"] == "email_taken"


async def test_weak_password_and_bad_email_are_422_with_fields(sub_client):
    resp = await sub_client.post("/v1/auth/register", json={"email": "c@example.com", "password": "short"})
    body = await resp.json()
    assert resp.status == 422
    assert {d["field"] for d in body["details"]} == {"password"}
    resp = await sub_client.post("/v1/auth/register", json={"email": "not-an-email", "password": "s3cure-Passw0rd"})
    body = await resp.json()
    assert resp.status == 422 and body["details"][0]["field"] == "email"
    resp = await sub_client.post("/v1/auth/register", json={"email": "d@example.com", "password": "s3cure-Passw0rd", "admin": True})
    assert resp.status == 422


async def test_malformed_and_missing_bodies_are_400(sub_client):
    resp = await sub_client.post("/v1/auth/login", data=b"{not json", headers={"Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status == 400 and body["code"] == "malformed_json"
    resp = await sub_client.post("/v1/auth/login")
    assert resp.status == 400
    resp = await sub_client.post("/v1/auth/login", json=["a", "list"])
    assert resp.status == 422


async def test_wrong_password_is_401_and_login_is_rate_limited(sub_client, settings):
    user = await register(sub_client)
    for _ in range(settings.login_max_attempts):
        resp = await sub_client.post("/v1/auth/login", json={"email": user["email"], "password": "wr0ng-password"})
        assert resp.status == 401
        assert (await resp.json())["code"] == "invalid_credentials"
    # Locked now: even the right password is refused until the window ends.
    resp = await sub_client.post("/v1/auth/login", json={"email": user["email"], "password": user["password"]})
    body = await resp.json()
    assert resp.status == 429 and body["code"] == "rate_limited"
    assert 0 < int(resp.headers["Retry-After"]) <= settings.login_window_seconds
    # Another account from the same address is not locked.
    other = await register(sub_client)
    resp = await sub_client.post("/v1/auth/login", json={"email": other["email"], "password": other["password"]})
    assert resp.status == 200


async def test_unknown_email_is_401_not_404(sub_client):
    resp = await sub_client.post("/v1/auth/login", json={"email": "nobody@example.com", "password": "s3cure-Passw0rd"})
    assert resp.status == 401


async def test_me_refuses_missing_malformed_alg_none_tampered_and_expired_tokens(sub_client, clock, settings):
    user = await register(sub_client)
    resp = await sub_client.get("/v1/auth/me")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    for header in ("Bearer", "Basic abc", "Bearer not.a.jwt"):
        resp = await sub_client.get("/v1/auth/me", headers={"Authorization": header})
        assert resp.status == 401, header
    none_token = jwt.encode({"sub": user["user"]["id"], "iat": 1, "exp": 2**40}, None, algorithm="none")
    resp = await sub_client.get("/v1/auth/me", headers={"Authorization": f"Bearer {none_token}"})
    assert resp.status == 401
    head, payload, sig = user["token"].split(".")
    resp = await sub_client.get("/v1/auth/me", headers={"Authorization": f"Bearer {head}.{payload}x.{sig}"})
    assert resp.status == 401
    clock.advance(timedelta(minutes=settings.jwt_expiry_minutes, seconds=1))
    resp = await sub_client.get("/v1/auth/me", headers=user["headers"])
    assert resp.status == 401


async def test_token_from_one_service_works_on_the_other(sub_client, pay_client):
    user = await register(sub_client)
    resp = await pay_client.get("/v1/auth/me", headers=user["headers"])
    assert resp.status == 200
