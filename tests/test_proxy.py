"""Endpoints, errors and fidelity, through the router against a fake provider on loopback."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.conftest import ALICE
from tests.fakes import raw_reply, status

CHAT = "/v1/chat/completions"


def assert_openai_error(body: Any, code: str | None = None) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code


async def test_chat_completion_relays_upstream_bytes_and_headers(one: Any) -> None:
    fake, client = one
    fake.extra_headers = {"x-ratelimit-remaining-requests": "99", "openai-processing-ms": "12"}
    r = await client.post(CHAT, json={"model": "g", "messages": []}, headers=ALICE)
    assert r.status == 200
    body = await r.json()
    assert body["service_tier"] == "default"  # an unknown field survives
    assert body["model"] == "up-0"
    assert "content_filter_results" not in body["choices"][0]
    assert r.headers["x-llm-router-provider"] == "p0"
    assert r.headers["x-llm-router-model"] == "up-0"
    assert r.headers["x-llm-router-key"] == "p0#0"
    assert r.headers["x-llm-router-attempts"] == "1"
    assert r.headers["x-ratelimit-remaining-requests"] == "99"
    assert len(r.headers["x-request-id"]) >= 16
    # The provider key went upstream; the client's router key did not.
    assert fake.seen[0].headers["Authorization"] == "Bearer sk-p0-a"


async def test_request_body_reaches_upstream_byte_for_byte_except_model(one: Any) -> None:
    fake, client = one
    raw = (
        b'{ "messages" : [{"role":"user","content":"caf\\u00e9 \\"model\\": \\"g\\""}],\n'
        b'  "temperature": 0, "stop": "\\n", "top_k": 40, "n": 1.0, "model" : "g",'
        b' "repetition_penalty": 1.05e0, "extra": {"model": "g"} }'
    )
    r = await client.post(CHAT, data=raw, headers={**ALICE, "Content-Type": "application/json"})
    assert r.status == 200, await r.text()
    expected = raw.replace(b'"model" : "g"', b'"model" : "up-0"')
    assert fake.seen[0].raw == expected


async def test_x_request_id_from_client_is_kept(one: Any) -> None:
    _, client = one
    r = await client.post(CHAT, json={"model": "g"}, headers={**ALICE, "x-request-id": "trace-123"})
    assert r.headers["x-request-id"] == "trace-123"


@pytest.mark.parametrize(
    "path", ["/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/chat/completions"]
)
async def test_every_proxied_path_is_appended_to_base_url(one: Any, path: str) -> None:
    fake, client = one
    r = await client.post(path, json={"model": "g", "input": "x"}, headers=ALICE)
    assert r.status == 200
    assert fake.seen[0].path == path


async def test_trailing_slash_in_base_url_gives_same_url(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    client = await router([url + "/"])
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 200
    assert fake.seen[0].path == "/v1/chat/completions"


async def test_models_lists_groups_with_auth(one: Any) -> None:
    _, client = one
    r = await client.get("/v1/models", headers=ALICE)
    body = await r.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["g"]
    assert {"id", "object", "created", "owned_by"} <= set(body["data"][0])
    r = await client.get("/v1/models")
    assert r.status == 401


async def test_health_needs_no_auth(one: Any) -> None:
    _, client = one
    r = await client.get("/health")
    assert r.status == 200 and await r.json() == {"status": "ok"}
    r = await client.head("/health")
    assert r.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "alice-secret"},
        {"Authorization": "Bearer alice-secre"},
        {"Authorization": "Bearer alice-secretX"},
    ],
)
async def test_bad_client_keys_get_openai_shaped_401(one: Any, headers: dict[str, str]) -> None:
    fake, client = one
    r = await client.post(CHAT, json={"model": "g"}, headers=headers)
    assert r.status == 401
    assert r.content_type == "application/json"
    assert_openai_error(await r.json(), "invalid_api_key")
    assert not fake.seen


async def test_named_client_keys_both_work(one: Any) -> None:
    _, client = one
    for key in ("alice-secret", "bob-key"):
        r = await client.post(CHAT, json={"model": "g"}, headers={"Authorization": f"bearer {key}"})
        assert r.status == 200


@pytest.mark.parametrize(
    ("data", "param"),
    [
        (b"", None),
        (b"{not json", None),
        (b"\xff\xfe{}", None),
        (b"[1, 2]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": 5}', "model"),
    ],
)
async def test_bad_bodies_get_400_not_500(one: Any, data: bytes, param: str | None) -> None:
    """Seed bug: the Go gateway answered invalid JSON with a plain-text 500."""
    fake, client = one
    r = await client.post(CHAT, data=data, headers=ALICE)
    assert r.status == 400
    body = await r.json()
    assert_openai_error(body)
    assert body["error"]["param"] == param
    assert not fake.seen


async def test_unknown_model_is_404_listing_groups(one: Any) -> None:
    _, client = one
    r = await client.post(CHAT, json={"model": "gpt-5"}, headers=ALICE)
    assert r.status == 404
    body = await r.json()
    assert_openai_error(body, "model_not_found")
    assert "'g'" in body["error"]["message"] or "g" in body["error"]["message"].split(": ")[-1]


async def test_unknown_path_and_method_are_openai_shaped(one: Any) -> None:
    _, client = one
    r = await client.post("/v1/nothing", json={}, headers=ALICE)
    assert r.status == 404
    assert_openai_error(await r.json())
    r = await client.get("/nothing")
    assert r.status == 404
    assert_openai_error(await r.json())
    r = await client.get(CHAT, headers=ALICE)
    assert r.status == 405
    assert_openai_error(await r.json())


async def test_body_over_limit_is_413(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    client = await router([url], max_body_bytes=1000)
    big = orjson.dumps({"model": "g", "messages": [{"role": "user", "content": "x" * 2000}]})
    r = await client.post(CHAT, data=big, headers=ALICE)
    assert r.status == 413
    assert_openai_error(await r.json())
    assert not fake.seen


@pytest.mark.parametrize("code", [400, 404, 413, 422])
async def test_upstream_client_errors_pass_through_unchanged(one: Any, code: int) -> None:
    fake, client = one
    fake.script.append(status(code))
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == code
    assert (await r.json())["error"]["message"] == f"fake {code}"
    assert len(fake.seen) == 1  # not retried


async def test_failed_upstream_gives_502_listing_attempts(one: Any) -> None:
    fake, client = one
    fake.script.extend([status(500), status(503), status(502)])
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 502
    body = await r.json()
    assert_openai_error(body)
    message = body["error"]["message"]
    assert "p0#0" in message and "p0#1" in message and "HTTP 500" in message
    assert "sk-p0" not in message
    assert r.headers["x-llm-router-attempts"] == "3"  # the third retries a key after a backoff
    assert "HTTP 502" in message


async def test_unreachable_upstream_is_502(router: Any) -> None:
    from tests.fakes import free_port

    client = await router([f"http://127.0.0.1:{free_port()}/v1"])
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 502
    assert "connect failed" in (await r.json())["error"]["message"]


async def test_upstream_non_json_body_still_reaches_client(one: Any) -> None:
    fake, client = one
    fake.script.append(raw_reply(b"not json at all", "text/plain"))
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 200
    assert await r.read() == b"not json at all"


async def test_replies_without_an_upstream_call_say_zero_attempts(one: Any) -> None:
    fake, client = one
    refused = [
        await client.post(CHAT, json={"model": "nope"}, headers=ALICE),  # 404
        await client.post(CHAT, data=b"{bad", headers=ALICE),  # 400
        await client.post(CHAT, json={"model": "g"}),  # 401
        await client.get("/v1/models", headers=ALICE),  # 200, answered by the router
    ]
    assert [r.status for r in refused] == [404, 400, 401, 200]
    assert all(r.headers["x-llm-router-attempts"] == "0" for r in refused)
    assert fake.seen == []
    fake.script.append(status(400))  # passed through: one call
    r = await client.post(CHAT, json={"model": "g"}, headers=ALICE)
    assert r.status == 400 and r.headers["x-llm-router-attempts"] == "1"
