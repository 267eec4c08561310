async def test_openapi_lists_every_declared_operation(sub_client, pay_client):
    for client in (sub_client, pay_client):
        resp = await client.get("/openapi.json")
        spec = await resp.json()
        assert resp.status == 200 and spec["openapi"] == "3.1.0"
        login = spec["paths"]["/v1/auth/login"]["post"]
        assert login["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Login"}
        assert "429" in login["responses"] and "security" not in login
        assert spec["paths"]["/v1/auth/me"]["get"]["security"] == [{"bearerAuth": []}]
        assert "TokenOut" in spec["components"]["schemas"]


async def test_swagger_ui_is_served_from_the_package(sub_client):
    resp = await sub_client.get("/docs")
    assert resp.status == 200 and "swagger-ui-bundle.js" in await resp.text()
    resp = await sub_client.get("/docs/static/swagger-ui-bundle.js")
    assert resp.status == 200 and len(await resp.read()) > 100_000


async def test_the_signed_webhook_documents_its_body(sub_client):
    spec = await (await sub_client.get("/openapi.json")).json()
    hook = spec["paths"]["/v1/webhooks/payment"]["post"]
    assert hook["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PaymentWebhook"}
    assert "security" not in hook and {"400", "401", "422"} <= set(hook["responses"])
