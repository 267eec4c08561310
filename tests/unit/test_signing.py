import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.signing import (
    OUTBOUND_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    SignatureFailure as F,
    compute_signature,
    inbound_headers,
    parse_outbound_header,
    sign_outbound,
    verify,
    verify_outbound,
)
from billing.utc import NaiveDatetime, unix_seconds

UTC = timezone.utc
NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
TS = unix_seconds(NOW)
SECRET = "whsec_test"
BODY = b'{"type":"payment.succeeded","id":"evt_1"}'


def reason(call) -> F:
    with pytest.raises(SignatureError) as info:
        call()
    return info.value.reason


# -- inbound -----------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    expected = hmac.new(SECRET.encode(), f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert compute_signature(SECRET, BODY, TS) == expected
    assert compute_signature(SECRET.encode(), BODY, TS) == expected


def test_inbound_headers_round_trip():
    headers = inbound_headers(SECRET, BODY, NOW)
    assert headers[TIMESTAMP_HEADER] == str(TS)
    assert headers[SIGNATURE_HEADER] == f"sha256={compute_signature(SECRET, BODY, TS)}"
    verify(SECRET, BODY, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], NOW)


@pytest.mark.parametrize("form", ["{}", "sha256={}", "SHA256={}", " {} "])
def test_raw_hex_and_prefixed_forms_are_accepted(form):
    signature = compute_signature(SECRET, BODY, TS)
    verify(SECRET, BODY, form.format(signature), str(TS), NOW)
    verify(SECRET, BODY, form.format(signature.upper()), TS, NOW)


def test_any_of_several_secrets_may_match():
    verify(["old", SECRET], BODY, compute_signature(SECRET, BODY, TS), str(TS), NOW)


@pytest.mark.parametrize("signature, timestamp", [(None, str(TS)), ("", str(TS)), ("abc", None), ("abc", "")])
def test_missing(signature, timestamp):
    assert reason(lambda: verify(SECRET, BODY, signature, timestamp, NOW)) == F.MISSING


@pytest.mark.parametrize(
    "signature, timestamp",
    [
        ("deadbeef", str(TS)),
        ("z" * 64, str(TS)),
        ("sha1=" + "a" * 64, str(TS)),
        ("a" * 63, str(TS)),
        ("a" * 64, "abc"),
        ("a" * 64, "1.5"),
        ("a" * 64, "-5"),
        ("a" * 64, "+5"),
        ("a" * 64, "1e9"),
        ("a" * 64, -5),
        ("a" * 64, True),
    ],
)
def test_malformed(signature, timestamp):
    assert reason(lambda: verify(SECRET, BODY, signature, timestamp, NOW)) == F.MALFORMED


@pytest.mark.parametrize("offset, expected", [(-301, F.STALE), (301, F.FUTURE), (-3600, F.STALE), (86400, F.FUTURE)])
def test_window_applies_both_ways(offset, expected):
    ts = TS + offset
    signature = compute_signature(SECRET, BODY, ts)
    assert reason(lambda: verify(SECRET, BODY, signature, str(ts), NOW)) == expected


@pytest.mark.parametrize("offset", [-300, -299, 0, 299, 300])
def test_inside_the_window(offset):
    ts = TS + offset
    verify(SECRET, BODY, compute_signature(SECRET, BODY, ts), str(ts), NOW)


def test_window_uses_sub_second_precision_of_now():
    ts = TS - 300
    signature = compute_signature(SECRET, BODY, ts)
    verify(SECRET, BODY, signature, str(ts), NOW)
    assert reason(lambda: verify(SECRET, BODY, signature, str(ts), NOW + timedelta(microseconds=1))) == F.STALE


def test_custom_tolerance():
    ts = TS - 30
    signature = compute_signature(SECRET, BODY, ts)
    assert reason(lambda: verify(SECRET, BODY, signature, str(ts), NOW, tolerance=10)) == F.STALE


def test_mismatch():
    signature = compute_signature(SECRET, BODY, TS)
    assert reason(lambda: verify("other", BODY, signature, str(TS), NOW)) == F.MISMATCH
    assert reason(lambda: verify(SECRET, BODY + b" ", signature, str(TS), NOW)) == F.MISMATCH
    assert reason(lambda: verify(SECRET, BODY, signature, str(TS + 1), NOW)) == F.MISMATCH  # timestamp is signed


def test_bad_arguments():
    with pytest.raises(TypeError):
        compute_signature(SECRET, BODY.decode(), TS)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        compute_signature("", BODY, TS)
    with pytest.raises(NaiveDatetime):
        verify(SECRET, BODY, compute_signature(SECRET, BODY, TS), str(TS), datetime(2025, 6, 15, 12))


@given(secret=st.binary(min_size=1, max_size=64), body=st.binary(max_size=512), skew=st.integers(-300, 300))
def test_inbound_round_trip(secret, body, skew):
    headers = inbound_headers(secret, body, NOW + timedelta(seconds=skew))
    verify(secret, body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], NOW)


@given(body=st.binary(min_size=1, max_size=512), data=st.data())
def test_any_mutated_body_byte_fails(body, data):
    headers = inbound_headers(SECRET, body, NOW)
    i = data.draw(st.integers(0, len(body) - 1))
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[i]))
    mutated = body[:i] + bytes([new_byte]) + body[i + 1:]
    assert reason(lambda: verify(SECRET, mutated, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], NOW)) == F.MISMATCH


@given(data=st.data())
def test_any_mutated_signature_character_fails(data):
    signature = compute_signature(SECRET, BODY, TS)
    i = data.draw(st.integers(0, len(signature) - 1))
    new_char = data.draw(st.sampled_from([c for c in "0123456789abcdef" if c != signature[i]]))
    mutated = signature[:i] + new_char + signature[i + 1:]
    assert reason(lambda: verify(SECRET, BODY, mutated, str(TS), NOW)) == F.MISMATCH


# -- outbound --------------------------------------------------------------------------------------


def test_outbound_header_format():
    header = sign_outbound(SECRET, BODY, NOW)
    assert header == f"t={TS},v1={compute_signature(SECRET, BODY, TS)}"
    assert OUTBOUND_HEADER == "Billing-Signature"
    verify_outbound(SECRET, BODY, header, NOW)


def test_rotation_signs_with_every_active_secret():
    header = sign_outbound(["old_secret", "new_secret"], BODY, NOW)
    timestamp, signatures = parse_outbound_header(header)
    assert timestamp == TS and len(signatures) == 2
    verify_outbound("old_secret", BODY, header, NOW)  # receiver not yet updated
    verify_outbound("new_secret", BODY, header, NOW)  # receiver already updated
    verify_outbound(["new_secret", "unrelated"], BODY, header, NOW)
    assert reason(lambda: verify_outbound("unrelated", BODY, header, NOW)) == F.MISMATCH


def test_unknown_schemes_are_ignored():
    header = f"t={TS},v0=legacy,v1={compute_signature(SECRET, BODY, TS)}"
    verify_outbound(SECRET, BODY, header, NOW)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_outbound_missing(header):
    assert reason(lambda: verify_outbound(SECRET, BODY, header, NOW)) == F.MISSING


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        f"t={TS}",
        "v1=" + "a" * 64,
        f"t={TS},t={TS},v1=" + "a" * 64,
        f"t=abc,v1=" + "a" * 64,
        f"t={TS},v1=short",
    ],
)
def test_outbound_malformed(header):
    assert reason(lambda: verify_outbound(SECRET, BODY, header, NOW)) == F.MALFORMED


@pytest.mark.parametrize("offset, expected", [(-301, F.STALE), (301, F.FUTURE)])
def test_outbound_window_both_ways(offset, expected):
    header = sign_outbound(SECRET, BODY, NOW + timedelta(seconds=offset))
    assert reason(lambda: verify_outbound(SECRET, BODY, header, NOW)) == expected
    inside = 299 if offset > 0 else -299
    verify_outbound(SECRET, BODY, sign_outbound(SECRET, BODY, NOW + timedelta(seconds=inside)), NOW)


@given(secrets=st.lists(st.text(min_size=1, max_size=32), min_size=1, max_size=3), body=st.binary(max_size=512))
def test_outbound_round_trip(secrets, body):
    header = sign_outbound(secrets, body, NOW)
    for secret in secrets:
        verify_outbound(secret, body, header, NOW)


@given(body=st.binary(min_size=1, max_size=512), data=st.data())
def test_outbound_mutated_body_fails(body, data):
    header = sign_outbound(SECRET, body, NOW)
    i = data.draw(st.integers(0, len(body) - 1))
    mutated = body[:i] + bytes([body[i] ^ data.draw(st.integers(1, 255))]) + body[i + 1:]
    assert reason(lambda: verify_outbound(SECRET, mutated, header, NOW)) == F.MISMATCH
