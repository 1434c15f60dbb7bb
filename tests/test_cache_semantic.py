"""The semantic cache: near-duplicate conversations hit, anything else that differs misses."""

from __future__ import annotations

import re
from typing import Any

from router.cache.semantic import Index, conversation, hash_vector
from tests.conftest import ALICE
from tests.fakes import config_tree, iter_events


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "g", "messages": [{"role": "user", "content": text}], **extra}


async def post(client: Any, body: dict[str, Any], **headers: str) -> tuple[dict[str, str], bytes]:
    r = await client.post("/v1/chat/completions", json=body, headers={**ALICE, **headers})
    assert r.status == 200
    return dict(r.headers), await r.read()


async def test_near_duplicates_hit_with_the_hashing_embedder(fakes: Any, router: Any) -> None:
    [(fake, url)] = await fakes(1)
    semantic = {"embedder": "hashing", "threshold": 0.9}
    client = await router([url], cache={"backend": "memory", "semantic": semantic})
    first, body = await post(client, ask("What is the capital of France?"))
    assert first["x-llm-router-cache"] == "miss"
    hit, again = await post(client, ask("what is the capital of france"))
    assert hit["x-llm-router-cache"] == "semantic" and again == body
    similarity = hit["x-llm-router-cache-similarity"]
    assert re.fullmatch(r"[01]\.\d{4}", similarity) and 0.9 <= float(similarity) < 1
    assert hit["x-llm-router-attempts"] == "0" and "x-llm-router-key" not in hit
    assert len(fake.seen) == 1
    # A semantic hit stores nothing new: the same words again are still a semantic hit.
    hit, _ = await post(client, ask("what is the capital of france"))
    assert hit["x-llm-router-cache"] == "semantic"
    # Streamed: a replay of the neighbour.
    hit, streamed = await post(client, ask("What is the capital of France ?", stream=True))
    assert hit["x-llm-router-cache"] == "semantic" and list(iter_events(streamed))[-1] == b"[DONE]"
    # Another question, or the same one with other parameters, is a miss.
    for body_ in (ask("What is the capital of Spain?"), ask("what is the capital of france",
                                                            temperature=0.2)):  # fmt: skip
        miss, _ = await post(client, body_)
        assert miss["x-llm-router-cache"] == "miss"
    assert len(fake.seen) == 3
    # bypass and refresh skip the semantic lookup too.
    for header in ("bypass", "refresh"):
        other, _ = await post(client, ask("what is the capital of FRANCE"), **{
            "x-llm-router-cache": header})  # fmt: skip
        assert other["x-llm-router-cache"] in ("bypass", "miss")
    assert len(fake.seen) == 5
    stats = (await (await client.get("/status", headers=ALICE)).json())["cache"]
    assert stats["semantic_hits"] == 3
    metrics = await (await client.get("/metrics")).text()
    assert 'llm_router_cache_requests_total{group="g",result="semantic"} 3.0' in metrics


async def test_a_group_embedder_goes_through_the_routers_own_balancing(
    fakes: Any, router: Any
) -> None:
    [(fake, url)] = await fakes(1)
    semantic = {"embedder": "embed", "threshold": 0.9}
    tree = config_tree([url], cache={"backend": "memory", "semantic": semantic})
    tree["providers"].append({"name": "mock", "type": "mock", "api_keys": ["m-1", "m-2"]})
    tree["groups"].append({"name": "embed", "models": [{"provider": "mock", "name": "emb"}]})
    client = await router(tree=tree)
    await post(client, ask("Tell me a joke about cats"))
    hit, _ = await post(client, ask("tell me a joke about  cats!"))
    assert hit["x-llm-router-cache"] == "semantic" and len(fake.seen) == 1
    state = await (await client.get("/status", headers=ALICE)).json()
    embedders = [t for t in state["targets"] if t["provider"] == "mock"]
    # Balanced over both keys, tokens counted, nothing left reserved.
    assert [t["requests"] for t in embedders] == [1, 1]
    assert all(t["usage_total"] > 0 and t["reserved"] == 0 for t in embedders)


def test_hashing_is_case_space_and_punctuation_blind() -> None:
    a = hash_vector(conversation([{"role": "user", "content": "What is the capital of France?"}]))
    b = hash_vector(conversation([{"role": "user", "content": "what  is the capital of france"}]))
    c = hash_vector(conversation([{"role": "user", "content": "Bake me a chocolate cake"}]))
    assert float(a @ b) >= 0.95 and float(a @ c) < 0.5
    assert conversation([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]) == (
        "user: hi"
    )


def test_index_keeps_its_bound_and_forgets_expired_vectors() -> None:
    now = [0.0]
    index = Index(max_entries=2, clock=lambda: now[0])
    index.add("f", "k1", hash_vector("one"), expires=10)
    index.add("f", "k2", hash_vector("two"), expires=20)
    index.add("g", "k3", hash_vector("three"), expires=30)
    assert len(index) == 2
    found = index.best("f", hash_vector("one"))
    assert found is not None and found[0] == "k2"  # k1, the first to expire, made room
    now[0] = 25
    assert index.best("f", hash_vector("two")) is None and len(index) == 1
    found = index.best("g", hash_vector("three"))
    assert found is not None and found[0] == "k3" and round(found[1], 4) == 1.0
