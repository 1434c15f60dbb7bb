"""Property-based tests (hypothesis) for what users and clients can send: config files and
raw HTTP requests. `make test` runs the fixed-seed profile "ci" (derandomized, bounded, so
a failure reproduces anywhere); HYPOTHESIS_PROFILE=long runs many more examples.

Properties: a config is either valid (and then builds an app) or a ConfigError whose every
line names a path and never holds a secret; a request gets an HTTP answer that is either a
success or an OpenAI-shaped error below 500 (502 when the fake upstream itself chokes),
and nothing is logged with a traceback. Escapes found here have named regression tests in
test_config_hostile.py and test_http_hostile.py.
"""

from __future__ import annotations

import copy
import gzip
import http.client
import io
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import brotli
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.app import create_app
from router.cli import describe
from router.config import Config, load, parse
from router.protocol import Runner
from router.schema import ConfigError
from tests.fakes import BackgroundLoop, FakeProvider, config_tree, start_site

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SECRET = "sk-GENERATED-SECRET-0123456789abcdef"

# -- config -------------------------------------------------------------------------------

BASE = config_tree(["http://127.0.0.1:1/v1"])
BASE["providers"].append({"name": "m", "type": "mock", "api_keys": [{"key": SECRET}]})
BASE["groups"][0]["models"].append({"provider": "m", "name": "x", "weight": 2})
BASE.update(retry={"attempts": 2}, logging={"level": "info"}, cors={"allow_origins": ["*"]})
WORDS = ["name", "type", "base_url", "api_keys", "key", "rpm", "tpm", "models", "provider",
         "weight", "groups", "providers", "timeout", "headers", "retry", "attempts", "state",
         "backend", "redis_url", "cors", "allow_origins", "max_output_tokens", "port", "host",
         "ca_file", "verify_tls", "trust_env", "budget_usd", "hedge_after", "<<", "strategy",
         "priority", "tier", "mode", "reserve", "api", "headroom_weights", "affinity_ttl",
         "predict_horizon", "budget_period"]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from([SECRET, "${UNSET_VAR}", "${PORT:-80}", "openai", "mock", "g", "p0", "",
                     "http://x/v1", "redis://r", "2024-01-01", "\x00\r\n", "anthropic",
                     "priority", "headroom", "complexity", "os:system", "fast", "high"]),
)  # fmt: skip
keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=8), st.just(SECRET), st.integers())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)


def _paths(tree: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, (*path, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, (*path, i))


ALL_PATHS = list(_paths(BASE))[1:]


@st.composite
def mutated_trees(draw: st.DrawFn) -> Any:
    tree = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = tree
        try:
            for step in path[:-1]:
                parent = parent[step]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(values)
            elif action == "delete" and isinstance(parent, dict):
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(keys)] = draw(values)
            elif isinstance(parent, list):
                parent.append(draw(values))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation changed the shape under this path
    return tree


def assert_valid_or_clean_errors(load_it: Any) -> Config | None:
    try:
        config = load_it()
    except ConfigError as exc:
        assert exc.errors
        for error in exc.errors:
            assert ": " in error and "\n" not in error, error
            assert SECRET not in error and "Traceback" not in error
        return None
    create_app(config)  # what serve builds must build
    describe(config)  # what check prints must print
    return config


@given(mutated_trees())
def test_generated_config_trees_are_valid_or_refused_cleanly(tree: Any) -> None:
    assert_valid_or_clean_errors(lambda: parse(tree, env={"PORT": "8080"}))


@given(
    mutated_trees(),
    st.sampled_from([".yaml", ".json"]),
    st.integers(0, 400),
    st.binary(max_size=16),
)
def test_generated_config_files_are_valid_or_refused_cleanly(
    tmp_path_factory: pytest.TempPathFactory, tree: Any, suffix: str, cut: int, junk: bytes
) -> None:
    """A tree dumped as YAML or JSON, then sometimes spliced with junk or cut short."""
    try:
        text = (
            orjson.dumps(tree, option=orjson.OPT_NON_STR_KEYS)
            if suffix == ".json"
            else yaml.safe_dump(tree).encode()
        )
    except (TypeError, orjson.JSONEncodeError):
        return  # not representable in this format
    if cut and junk:
        text = text[:cut] + junk + text[cut:]
    path = tmp_path_factory.mktemp("cfg") / f"c{suffix}"
    path.write_bytes(text)
    assert_valid_or_clean_errors(lambda: load(path, env={}))


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_as_a_config_file_are_refused_cleanly(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    for suffix in (".yaml", ".json"):
        path = tmp_path_factory.mktemp("cfg") / f"c{suffix}"
        path.write_bytes(data)
        assert_valid_or_clean_errors(lambda p=path: load(p, env={}))


# -- HTTP ---------------------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[int, Records]]:
    """A fake provider and the router under protocol.Runner (as `serve` runs it)."""
    bg = BackgroundLoop()
    fake_runner, fake_port = bg.run(start_site(FakeProvider().app()))
    tree = config_tree([f"http://127.0.0.1:{fake_port}/v1"], read_timeout=0.5)
    tree["max_body_bytes"] = 4096
    tree["retry"] = {"attempts": 1}

    async def start() -> tuple[Runner, int]:
        runner = Runner(create_app(parse(tree, env={})), read_timeout=0.5, access_log=None)
        await runner.setup()
        from aiohttp import web

        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    runner, port = bg.run(start())
    records = Records()
    root = logging.getLogger()
    root.addHandler(records)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    yield port, records
    root.removeHandler(records)
    root.setLevel(old_level)
    bg.run(runner.cleanup())
    bg.run(fake_runner.cleanup())
    bg.close()


TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
token = st.text(alphabet=TCHAR, min_size=1, max_size=12)
header_names = st.sampled_from(
    ["Content-Length", "Transfer-Encoding", "Content-Encoding", "Authorization", "Content-Type",
     "Accept-Encoding", "x-request-id", "Origin", "Host", "Connection", "Expect",
     "x-llm-router-provider", "Cache-Control", "x-llm-router-priority", "x-llm-router-mode",
     "x-llm-router-session", "x-api-key", "anthropic-version"]
) | token  # fmt: skip
header_values = st.sampled_from(
    ["Bearer alice-secret", "chunked", "gzip", "br", "deflate", "identity", "abc", "-1", "0",
     "99999999999999999999", "application/json", "close", "100-continue", "gzip, br;q=0",
     "*", f"Bearer {SECRET}", "high", "fast", "alice-secret", "p0"]
) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20) | st.binary(
    max_size=12
).map(lambda b: b.decode("latin-1"))  # fmt: skip
bodies = st.sampled_from(
    [b"", b'{"model": "g"}', b'{"model": "g", "stream": true}', b'{"model": 1}', b"[]",
     b'{"model": "nope"}', b"\x1f\x8b\x08\x00junk", b'{"model": "g", "max_tokens": 1e400}']
) | st.binary(max_size=64)  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE"]) | token)
    path = draw(
        st.sampled_from(
            [
                "/v1/chat/completions",
                "/v1/models",
                "/health",
                "/status",
                "/v1/x",
                "/v1/messages",
                "/v1/embeddings",
                "/v1/responses",
            ]
        )  # fmt: skip
        | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(
            lambda p: "/" + p
        )
    )
    version = draw(
        st.sampled_from(["HTTP/1.1", "HTTP/1.0"]) | st.sampled_from(["HTTP/9.9", "HTTP/1.x", ""])
    )
    body = draw(bodies)
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    if draw(st.booleans()):
        headers.append(("Content-Length", str(len(body))))
    if draw(st.booleans()):
        headers.append(("Authorization", "Bearer alice-secret"))
    head = f"{method} {path} {version}".strip() + "\r\n"
    head += "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    return head.encode("latin-1") + body


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # a half-sent request ends here; the server must answer
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def _parse(reply: bytes, head: bool) -> tuple[int, dict[str, str], bytes]:
    """The first response in `reply`, its body de-chunked and decompressed."""
    resp = http.client.HTTPResponse(_Bytes(reply), method="HEAD" if head else "GET")  # type: ignore[arg-type]
    resp.begin()
    body = resp.read()
    coding = resp.getheader("Content-Encoding", "")
    if coding == "gzip":
        body = gzip.decompress(body)
    elif coding == "br":
        body = brotli.decompress(body)
    headers = {k.lower(): v for k, v in resp.getheaders()}
    return resp.status, headers, body


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=requests())
def test_generated_requests_get_a_clean_answer(live: tuple[int, Records], data: bytes) -> None:
    port, records = live
    records.records.clear()
    reply = _exchange(port, data)
    if reply:  # (a request cut short may be closed without a word)
        status, headers, body = _parse(reply, head=data.startswith(b"HEAD "))
        assert status < 500 or status in (502, 503, 504), reply[:300]
        if status >= 400 and headers.get("content-type") == "application/json" and body:
            error = orjson.loads(body)["error"]
            assert set(error) == {"message", "type", "param", "code"}
    for record in records.records:
        assert record.exc_info is None, record.getMessage()
        assert record.levelno < logging.ERROR, record.getMessage()
        assert SECRET not in record.getMessage()
