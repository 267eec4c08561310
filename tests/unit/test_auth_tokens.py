import base64
import json
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import jwt
import pytest

from billing import auth

SECRET = "s" * 64
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_roundtrip():
    uid = uuid4()
    token = auth.create_token(uid, SECRET, now=NOW, expires_in=timedelta(minutes=5))
    assert auth.decode_token(token, SECRET, now=NOW + timedelta(minutes=4)) == uid


def test_expired_token_is_refused_by_the_injected_clock():
    token = auth.create_token(uuid4(), SECRET, now=NOW, expires_in=timedelta(minutes=5))
    with pytest.raises(auth.InvalidToken, match="expired"):
        auth.decode_token(token, SECRET, now=NOW + timedelta(minutes=5))


def test_alg_none_is_refused():
    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': str(uuid4()), 'iat': 1, 'exp': 2**40})}."
    with pytest.raises(auth.InvalidToken):
        auth.decode_token(token, SECRET, now=NOW)


def test_tampered_payload_and_wrong_key_are_refused():
    token = auth.create_token(uuid4(), SECRET, now=NOW, expires_in=timedelta(minutes=5))
    header, _, signature = token.split(".")
    forged = f"{header}.{b64({'sub': str(uuid4()), 'iat': 1, 'exp': 2**40})}.{signature}"
    with pytest.raises(auth.InvalidToken):
        auth.decode_token(forged, SECRET, now=NOW)
    with pytest.raises(auth.InvalidToken):
        auth.decode_token(token, "another-secret" * 4, now=NOW)


def test_other_algorithm_and_missing_claims_are_refused():
    hs512 = jwt.encode({"sub": str(uuid4()), "iat": 1, "exp": 2**40}, SECRET, algorithm="HS512")
    with pytest.raises(auth.InvalidToken):
        auth.decode_token(hs512, SECRET, now=NOW)
    no_exp = jwt.encode({"sub": str(uuid4()), "iat": 1}, SECRET, algorithm="HS256")
    with pytest.raises(auth.InvalidToken):
        auth.decode_token(no_exp, SECRET, now=NOW)
    bad_sub = jwt.encode({"sub": "admin", "iat": 1, "exp": 2**40}, SECRET, algorithm="HS256")
    with pytest.raises(auth.InvalidToken):
        auth.decode_token(bad_sub, SECRET, now=NOW)


@pytest.mark.parametrize("password,problem", [
    ("short1", "at least 8"), ("allletters", "digit"), ("12345678901", "letter"), ("password123", "too common"),
])
def test_password_policy(password, problem):
    assert any(problem in p for p in auth.password_problems(password))


def test_password_policy_accepts_a_good_password_and_refuses_the_email():
    assert auth.password_problems("s3cure-Passw0rd") == []
    assert auth.password_problems("me1@x.io", email="me1@x.io")


def test_bcrypt_hash_and_verify():
    h = auth.hash_password("s3cure-Passw0rd", rounds=4)
    assert h.startswith("$2") and "s3cure" not in h
    assert auth.verify_password("s3cure-Passw0rd", h)
    assert not auth.verify_password("wrong-Passw0rd", h)
    assert not auth.verify_password("x", "not-a-hash")


def test_token_issued_at_an_advanced_test_clock_is_valid_on_that_clock():
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    from billing.auth import InvalidToken, create_token, decode_token
    later = datetime.now(UTC) + timedelta(days=40)  # the test clock moved forward
    user = uuid4()
    token = create_token(user, "s" * 40, now=later, expires_in=timedelta(hours=1))
    assert decode_token(token, "s" * 40, now=later) == user
    try:
        decode_token(token, "s" * 40, now=later - timedelta(days=1))  # issued in the verifier's future
    except InvalidToken:
        pass
    else:
        raise AssertionError("a token from the future must be refused")


def test_a_verified_token_is_cached_but_still_expires_and_forgeries_never_pass():
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    from billing.auth import InvalidToken, create_token, decode_token
    now, user = datetime.now(UTC), uuid4()
    token = create_token(user, "k" * 40, now=now, expires_in=timedelta(minutes=5))
    assert decode_token(token, "k" * 40, now=now) == user
    assert decode_token(token, "k" * 40, now=now) == user  # from the cache
    for bad in (lambda: decode_token(token, "k" * 40, now=now + timedelta(minutes=6)),  # expired, even cached
                lambda: decode_token(token, "other" * 8, now=now),                      # another secret
                lambda: decode_token(token[:-2] + "xx", "k" * 40, now=now)):             # tampered signature
        try:
            bad()
        except InvalidToken:
            continue
        raise AssertionError("must be refused")


def test_issue_time_is_judged_by_the_injected_clock_not_the_machine():
    # A token issued after the test clock moved a year ahead is valid at that (clock) time...
    later = datetime.now(UTC) + timedelta(days=365)
    uid = uuid4()
    token = auth.create_token(uid, SECRET, now=later, expires_in=timedelta(minutes=5))
    assert auth.decode_token(token, SECRET, now=later) == uid
    # ...but not for a clock that has not reached its issue time.
    with pytest.raises(auth.InvalidToken, match="future"):
        auth.decode_token(token, SECRET, now=later - timedelta(minutes=1))
