import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from structlog.testing import capture_logs

from billing.http.app import create_app
from billing.http.payments import GATEWAY
from tests.conftest import register
from tests.integration.payment_support import (DECLINE_ALWAYS, VISA, CountingGateway, all_rows_text, make_subscription,
                                               outbox, payment_body)


@pytest.fixture
def gateway():
    return CountingGateway()


@pytest.fixture
async def client(aiohttp_client, settings, clock, gateway):
    app = create_app(settings, "payments", clock=clock)
    app[GATEWAY] = gateway
    return await aiohttp_client(app)


@pytest.fixture
async def user(client):
    return await register(client)


def idem(user, key=None):
    return {**user["headers"], "Idempotency-Key": key or uuid.uuid4().hex}


async def pay(client, user, body, key=None):
    resp = await client.post("/v1/payments/process", json=body, headers=idem(user, key))
    return resp.status, await resp.json(), resp


# -- test cards ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("number, status, tx_status, decline_code", [
    (VISA, 201, "succeeded", None),
    ("5555555555554444", 201, "succeeded", None),
    ("378282246310005", 201, "succeeded", None),
    ("4000000000000002", 402, "failed", "card_declined"),
    ("4000000000009995", 402, "failed", "insufficient_funds"),
    ("4000000000000069", 402, "failed", "expired_card"),
    (DECLINE_ALWAYS, 402, "failed", "card_declined"),
])
async def test_each_test_card(client, user, pool, number, status, tx_status, decline_code):
    sub = await make_subscription(pool, user["user"]["id"])
    code, body, _ = await pay(client, user, payment_body(sub, number))
    assert code == status, body
    tx = body["data"] if status == 201 else body["details"]
    assert (tx["status"], tx["decline_code"], tx["amount"], tx["currency"]) == (tx_status, decline_code, "9.99", "USD")
    assert tx["card_last4"] == number[-4:] and tx["kind"] == "charge" and tx["reason"] == "subscription_create"
    if status == 402:
        assert body["code"] == "payment_failed"
    else:
        assert tx["gateway_reference"].startswith("mock_ch_")
    row = await pool.fetchrow("SELECT status, decline_code FROM transactions WHERE id = $1", uuid.UUID(tx["id"]))
    assert (row["status"], row["decline_code"]) == (tx_status, decline_code)
    # The outcome for 8001, both as a command and as the gateway's webhook.
    [outcome] = await outbox(pool, "subscription_update")
    assert outcome["action"] == "payment_outcome"
    assert outcome["payload"]["status"] == tx_status and outcome["payload"]["transaction_id"] == tx["id"]
    assert outcome["payload"]["subscription_id"] == str(sub) and outcome["payload"]["amount"] == "9.99"
    [hook] = await outbox(pool, "gateway_webhook")
    webhook = hook["payload"]["body"]
    assert hook["action"] == "deliver" and hook["payload"]["event_id"] == f"evt_{tx['id']}" == webhook["event_id"]
    assert webhook["event_type"] == f"payment.{tx_status}" and webhook["amount"] == "9.99"
    assert webhook["user_id"] == user["user"]["id"] and webhook["decline_code"] == decline_code
    assert webhook["reason"] == "subscription_create" and webhook["plan_id"]
    # Only a card that was charged successfully is saved (as the default).
    methods = (await (await client.get("/v1/payment-methods", headers=user["headers"])).json())["data"]
    assert [(m["last4"], m["is_default"]) for m in methods] == ([(number[-4:], True)] if status == 201 else [])


async def test_gateway_timeout_answers_504_and_never_charges_twice(client, user, pool, gateway):
    sub = await make_subscription(pool, user["user"]["id"])
    body = payment_body(sub, "4000000000000119")
    code, first, _ = await pay(client, user, body, key="timeout-1")
    assert code == 504 and first["code"] == "gateway_timeout" and first["details"]["status"] == "pending"
    # Retrying with the same key reuses the pending transaction and the same gateway key.
    code, again, _ = await pay(client, user, body, key="timeout-1")
    assert code == 504 and again["details"]["id"] == first["details"]["id"]
    assert len(set(gateway.charges)) == 1
    # Another key while the outcome is unknown: refused, not a second charge.
    code, other, _ = await pay(client, user, body, key="timeout-2")
    assert code == 409 and other["code"] == "payment_pending"
    assert other["details"]["transaction_id"] == first["details"]["id"]
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 1
    assert await outbox(pool) == []  # no outcome until the charge is known


# -- card validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, field, error_type", [
    ({"card_number": "4242424242424241"}, "card_number", "incorrect_number"),
    ({"card_number": "4242 4242"}, "card_number", "incorrect_number"),
    ({"card_expiry": "01/20"}, "card_expiry", "expired_card"),
    ({"card_expiry": "13/30"}, "card_expiry", "less_than_equal"),
    ({"card_expiry": "1/30"}, "card_expiry", "invalid_expiry"),
    ({"card_cvv": "12"}, "card_cvv", "incorrect_cvc"),
    ({"card_number": "378282246310005", "card_cvv": "123"}, "card_cvv", "incorrect_cvc"),
])
async def test_invalid_cards_answer_422_with_field_details(client, user, pool, overrides, field, error_type):
    sub = await make_subscription(pool, user["user"]["id"])
    body = payment_body(sub, **overrides)
    code, answer, resp = await pay(client, user, body)
    assert code == 422 and answer["code"] == "invalid_card", answer
    assert {(d["field"], d["type"]) for d in answer["details"]} >= {(field, error_type)}
    text = await resp.text()
    assert body["card_number"] not in text and "4242424242424241" not in text
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 0


async def test_malformed_request_fields_answer_422(client, user, pool):
    sub = await make_subscription(pool, user["user"]["id"])
    for overrides, field in [({"amount": 9.99}, "amount"), ({"amount": "9.999"}, "amount"), ({"amount": "-1"}, "amount"),
                             ({"currency": "usd"}, "currency"), ({"cardholder_name": "x"}, "cardholder_name"),
                             ({"subscription_id": "nope"}, "subscription_id")]:
        code, answer, _ = await pay(client, user, payment_body(sub, **overrides))
        assert code == 422 and field in {d["field"] for d in answer["details"]}, (overrides, answer)
        assert VISA not in str(answer)
    code, answer, _ = await pay(client, user, {k: v for k, v in payment_body(sub).items() if k != "card_number"})
    assert code == 422 and "card_number" in {d["field"] for d in answer["details"]}


# -- what may be paid -----------------------------------------------------------------------------------


async def test_amount_and_currency_must_match_what_is_due(client, user, pool):
    sub = await make_subscription(pool, user["user"]["id"])
    for overrides in ({"amount": "9.98"}, {"amount": "29.99"}, {"currency": "EUR"}):
        code, answer, _ = await pay(client, user, payment_body(sub, **overrides))
        assert code == 422 and answer["code"] == "amount_mismatch"
        assert answer["details"] == {"amount_due": "9.99", "currency": "USD"}
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 0


async def test_past_due_pays_the_current_plan_price_as_a_dunning_retry(client, user, pool, clock):
    sub = await make_subscription(pool, user["user"]["id"], plan="pro", status="past_due",
                                  past_due_since=clock.now() - timedelta(days=1))
    code, answer, _ = await pay(client, user, payment_body(sub, amount="9.99"))
    assert code == 422 and answer["code"] == "amount_mismatch"
    code, answer, _ = await pay(client, user, payment_body(sub, amount="29.99"))
    assert code == 201 and answer["data"]["reason"] == "dunning_retry"
    code, answer, _ = await pay(client, user, payment_body(sub, amount="29.99"))
    assert code == 409 and answer["code"] == "already_paid"


async def test_only_pending_or_past_due_subscriptions_of_the_caller(client, user, pool):
    active = await make_subscription(pool, user["user"]["id"], status="active")
    code, answer, _ = await pay(client, user, payment_body(active))
    assert code == 409 and answer["code"] == "subscription_not_payable"
    other = await register(client)
    theirs = await make_subscription(pool, other["user"]["id"])
    code, answer, _ = await pay(client, user, payment_body(theirs))
    assert code == 404
    code, answer, _ = await pay(client, user, payment_body(uuid.uuid4()))
    assert code == 404
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 0


async def test_a_paid_subscription_is_not_charged_again_with_a_new_key(client, user, pool, gateway):
    sub = await make_subscription(pool, user["user"]["id"])
    assert (await pay(client, user, payment_body(sub)))[0] == 201
    code, answer, _ = await pay(client, user, payment_body(sub))
    assert code == 409 and answer["code"] == "already_paid"
    assert len(gateway.charges) == 1


# -- idempotency ----------------------------------------------------------------------------------------


async def test_same_key_replays_the_same_transaction_and_charges_once(client, user, pool, gateway):
    sub = await make_subscription(pool, user["user"]["id"])
    body = payment_body(sub)
    code1, first, _ = await pay(client, user, body, key="k-1")
    code2, second, resp = await pay(client, user, body, key="k-1")
    assert code1 == code2 == 201 and resp.headers.get("Idempotent-Replayed") == "true"
    assert first["data"]["id"] == second["data"]["id"]
    assert gateway.charges == [f"{user['user']['id']}:api:k-1"]
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 1
    # Namespaced: a client's key never collides with a worker's charge_key.
    assert await pool.fetchval("SELECT idempotency_key FROM transactions") == "api:k-1"


async def test_a_decline_is_replayed_too(client, user, pool, gateway):
    sub = await make_subscription(pool, user["user"]["id"])
    body = payment_body(sub, "4000000000000002")
    first = await pay(client, user, body, key="d-1")
    second = await pay(client, user, body, key="d-1")
    assert first[0] == second[0] == 402 and first[1]["details"]["id"] == second[1]["details"]["id"]
    assert len(gateway.charges) == 1
    # Declined: a new attempt with another card and key may follow.
    code, answer, _ = await pay(client, user, payment_body(sub), key="d-2")
    assert code == 201 and answer["data"]["id"] != first[1]["details"]["id"]


async def test_same_key_with_a_different_body_is_409(client, user, pool):
    sub = await make_subscription(pool, user["user"]["id"])
    assert (await pay(client, user, payment_body(sub), key="k-2"))[0] == 201
    code, answer, _ = await pay(client, user, payment_body(sub, "5555555555554444"), key="k-2")
    assert code == 409 and answer["code"] == "idempotency_key_reused"


async def test_twenty_concurrent_identical_requests_charge_once(client, user, pool, gateway):
    sub = await make_subscription(pool, user["user"]["id"])
    body = payment_body(sub)
    results = await asyncio.gather(*(pay(client, user, body, key="same") for _ in range(20)))
    codes = sorted(r[0] for r in results)
    assert codes.count(201) >= 1 and set(codes) <= {201, 409}
    assert {r[1]["data"]["id"] for r in results if r[0] == 201} == {str(await pool.fetchval("SELECT id FROM transactions"))}
    assert len(gateway.charges) == 1
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 1


async def test_twenty_concurrent_requests_with_different_keys_charge_once(client, user, pool, gateway):
    sub = await make_subscription(pool, user["user"]["id"])
    results = await asyncio.gather(*(pay(client, user, payment_body(sub)) for _ in range(20)))
    codes = [r[0] for r in results]
    assert codes.count(201) == 1 and codes.count(409) == 19
    assert {r[1]["code"] for r in results if r[0] == 409} == {"already_paid"}
    assert len(gateway.charges) == 1
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 1
    assert len(await outbox(pool, "subscription_update")) == 1


# -- refunds --------------------------------------------------------------------------------------------


async def paid_charge(client, user, pool, plan="basic", amount="9.99") -> str:
    sub = await make_subscription(pool, user["user"]["id"], plan=plan)
    code, answer, _ = await pay(client, user, payment_body(sub, amount=amount))
    assert code == 201, answer
    return answer["data"]["id"]


async def refund(client, user, charge_id, body=None, key=None):
    resp = await client.post(f"/v1/payments/{charge_id}/refund", json=body or {}, headers=idem(user, key))
    return resp.status, await resp.json()


async def test_full_refund_is_pending_and_queued(client, user, pool):
    charge = await paid_charge(client, user, pool)
    code, answer = await refund(client, user, charge, {"reason": "changed my mind"}, key="r-1")
    assert code == 202, answer
    data = answer["data"]
    assert (data["kind"], data["status"], data["amount"], data["parent_id"]) == ("refund", "pending", "9.99", charge)
    assert data["reason"] == "changed my mind"
    [queued] = await outbox(pool, "refund_initiation")
    assert queued["action"] == "refund_payment"
    assert queued["payload"] == {"refund_id": data["id"], "charge_id": charge, "user_id": user["user"]["id"],
                                 "amount": "9.99", "currency": "USD"}
    # Replay: the same refund, nothing new queued.
    assert (await refund(client, user, charge, {"reason": "changed my mind"}, key="r-1"))[1]["data"]["id"] == data["id"]
    assert len(await outbox(pool, "refund_initiation")) == 1
    # The pending refund counts: nothing is left to refund.
    code, answer = await refund(client, user, charge)
    assert code == 409 and answer["code"] == "nothing_to_refund"


async def test_partial_refunds_never_exceed_what_was_paid(client, user, pool):
    charge = await paid_charge(client, user, pool)
    assert (await refund(client, user, charge, {"amount": "3.00"}))[0] == 202
    code, answer = await refund(client, user, charge, {"amount": "7.00"})
    assert code == 422 and answer["code"] == "exceeds_refundable" and answer["details"]["refundable"] == "6.99"
    code, answer = await refund(client, user, charge, {"amount": "6.99"})
    assert code == 202 and answer["data"]["amount"] == "6.99"
    for bad in ({"amount": "0"}, {"amount": "-1"}, {"amount": 1.5}, {"amount": "1.001"}):
        assert (await refund(client, user, charge, bad))[0] == 422


async def test_concurrent_refunds_never_exceed_what_was_paid(client, user, pool):
    charge = await paid_charge(client, user, pool)
    results = await asyncio.gather(*(refund(client, user, charge, {"amount": "2.00"}) for _ in range(10)))
    codes = [code for code, _ in results]
    assert codes.count(202) == 4 and codes.count(422) == 6
    total = await pool.fetchval("SELECT sum(amount) FROM transactions WHERE kind = 'refund'")
    assert total == Decimal("8.00")


async def test_refund_refusals(client, user, pool):
    charge = await paid_charge(client, user, pool)
    other = await register(client)
    assert (await refund(client, other, charge))[0] == 404
    assert (await refund(client, user, uuid.uuid4()))[0] == 404
    assert (await refund(client, user, "not-a-uuid"))[0] == 404
    sub = await make_subscription(pool, other["user"]["id"])
    code, declined, _ = await pay(client, other, payment_body(sub, "4000000000000002"))
    code, answer = await refund(client, other, declined["details"]["id"])
    assert code == 409 and answer["code"] == "not_refundable"
    _, ok = await refund(client, user, charge, {"amount": "1.00"})
    code, answer = await refund(client, user, ok["data"]["id"])
    assert code == 409 and answer["code"] == "not_refundable"  # a refund cannot be refunded


# -- reads ----------------------------------------------------------------------------------------------


async def test_history_is_paginated_newest_first_and_private(client, user, pool):
    charge = await paid_charge(client, user, pool)
    for amount in ("1.00", "2.00", "3.00"):
        assert (await refund(client, user, charge, {"amount": amount}))[0] == 202
    resp = await client.get("/v1/payments/history?page=1&page_size=3", headers=user["headers"])
    page1 = (await resp.json())["data"]
    assert resp.status == 200 and page1["total"] == 4 and len(page1["items"]) == 3
    assert [i["amount"] for i in page1["items"]] == ["3.00", "2.00", "1.00"]
    page2 = (await (await client.get("/v1/payments/history?page=2&page_size=3", headers=user["headers"])).json())["data"]
    assert [i["id"] for i in page2["items"]] == [charge]
    assert (await client.get("/v1/payments/history?page=0", headers=user["headers"])).status == 422
    assert (await client.get("/v1/payments/history?page_size=1000", headers=user["headers"])).status == 422
    other = await register(client)
    theirs = (await (await client.get("/v1/payments/history", headers=other["headers"])).json())["data"]
    assert theirs == {"items": [], "total": 0, "page": 1, "page_size": 20}


async def test_get_one_payment_only_for_its_owner(client, user, pool):
    charge = await paid_charge(client, user, pool)
    resp = await client.get(f"/v1/payments/{charge}", headers=user["headers"])
    assert resp.status == 200 and (await resp.json())["data"]["id"] == charge
    other = await register(client)
    assert (await client.get(f"/v1/payments/{charge}", headers=other["headers"])).status == 404
    assert (await client.get("/v1/payments/nope", headers=user["headers"])).status == 404
    assert (await client.get(f"/v1/payments/{charge}")).status == 401


# -- saved cards ----------------------------------------------------------------------------------------


async def test_attach_a_card_without_charging_it(client, user, pool, gateway):
    card = {"card_number": DECLINE_ALWAYS, "card_expiry": "11/31", "card_cvv": "123", "cardholder_name": "Ada"}
    resp = await client.post("/v1/payment-methods", json=card, headers=idem(user))
    first = (await resp.json())["data"]
    assert resp.status == 201 and (first["brand"], first["last4"], first["exp_month"], first["exp_year"]) == ("visa", "0341", 11, 2031)
    assert first["is_default"] and "gateway_token" not in first
    resp = await client.post("/v1/payment-methods", json={**card, "card_number": "5555555555554444"}, headers=idem(user))
    assert resp.status == 201
    listed = (await (await client.get("/v1/payment-methods", headers=user["headers"])).json())["data"]
    assert [(m["last4"], m["is_default"]) for m in listed] == [("4444", True), ("0341", False)]
    assert gateway.charges == []
    token = await pool.fetchval("SELECT gateway_token FROM payment_methods WHERE last4 = '0341'")
    assert token.startswith("pm_visa_0341_chargefail_")
    bad = await client.post("/v1/payment-methods", json={**card, "card_expiry": "01/21"}, headers=idem(user))
    assert bad.status == 422 and (await bad.json())["details"][0]["field"] == "card_expiry"
    assert (await client.post("/v1/payment-methods", json=card)).status == 401
    other = await register(client)
    assert (await (await client.get("/v1/payment-methods", headers=other["headers"])).json())["data"] == []


# -- secrets ----------------------------------------------------------------------------------------------


async def test_card_numbers_and_cvvs_are_never_echoed_stored_or_logged(client, user, pool, caplog):
    caplog.set_level(logging.DEBUG)
    numbers = [VISA, "4000000000000002", "4242424242424241"]
    texts = []
    with capture_logs() as logs:
        sub = await make_subscription(pool, user["user"]["id"])
        for number in numbers:
            code, answer, resp = await pay(client, user, payment_body(sub, number, card_cvv="987"))
            texts.append(await resp.text())
        charge = (await pay(client, user, payment_body(sub, VISA, card_cvv="987")))[1]
        texts.append(str(charge))
        resp = await client.post("/v1/payment-methods", headers=idem(user), json={
            "card_number": "5555555555554444", "card_expiry": "12/30", "card_cvv": "987", "cardholder_name": "Ada"})
        texts.append(await resp.text())
        texts.append(await (await client.get("/v1/payments/history", headers=user["headers"])).text())
        texts.append(await (await client.get("/v1/payment-methods", headers=user["headers"])).text())
    stored = await all_rows_text(pool)
    logged = "\n".join(str(entry) for entry in logs) + caplog.text
    assert logs  # the requests were logged
    for number in numbers + ["5555555555554444"]:
        for where in (*texts, stored, logged):
            assert number not in where
    for where in (*texts, stored, logged):  # the CVV never appears as a value (digits may occur inside ids)
        assert '"987"' not in where and "'987'" not in where and "=987" not in where


async def test_history_page_beyond_any_offset_is_a_422_not_a_500(client, user):
    # Found by schemathesis: page * page_size overflowed PostgreSQL's bigint OFFSET.
    resp = await client.get("/v1/payments/history?page=4726433203957842944&page_size=60", headers=user["headers"])
    assert resp.status == 422, await resp.json()
