"""The config: frozen dataclasses, loaded from YAML or JSON once and validated once."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from yarl import URL

from router import configfile, tls
from router.schema import _MISSING, ConfigError, Reader, show, substitute

ProviderType = Literal["openai", "anthropic", "mock"]
PROVIDER_TYPES: tuple[ProviderType, ...] = ("openai", "anthropic", "mock")
MAX_OUTPUT_TOKENS = 32768  # what a request may reserve for its reply unless a model says
Api = Literal["openai", "anthropic"]  # a wire format
API_NAMES: tuple[Api, ...] = ("openai", "anthropic")
ANTHROPIC_URL = "https://api.anthropic.com"
Lane = Literal["high", "normal", "low"]
Tier = Literal["fast", "balanced", "accurate"]
LANES: tuple[Lane, ...] = ("high", "normal", "low")
TIERS: tuple[Tier, ...] = ("fast", "balanced", "accurate")
# (capacity, latency, stability) weights of the headroom score, per lane (seed route-llm's)
HEADROOM_WEIGHTS: Mapping[str, tuple[float, float, float]] = {
    "high": (0.5, 0.4, 0.1),
    "normal": (0.5, 0.3, 0.2),
    "low": (0.3, 0.1, 0.6),
}


@dataclass(frozen=True)
class ProviderKey:
    secret: str | None  # None: the upstream needs no key (a local server)
    label: str  # what logs, headers and /status show instead of the secret
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True)
class Provider:
    name: str
    type: ProviderType
    base_url: str
    keys: tuple[ProviderKey, ...]
    timeout: float = 600.0
    connect_timeout: float = 10.0
    first_byte_timeout: float = 60.0
    idle_timeout: float = 60.0
    headers: Mapping[str, str] = field(default_factory=dict)
    api: Api = "openai"  # the API it speaks: its type, or for a mock the `api` setting
    latency_ms: float = 0.0  # mock only
    failure_rate: float = 0.0  # mock only
    verify_tls: bool = True
    ca_file: str | None = None  # a private CA's PEM bundle, trusted besides the system's


@dataclass(frozen=True)
class ModelRef:
    provider: str
    name: str
    weight: float = 1.0
    input_cost: float = 0.0
    output_cost: float = 0.0
    priority: int = 0  # strategy priority: lower numbers first
    tier: Tier = "balanced"  # strategy complexity
    priced: bool = False  # input_cost or output_cost was given
    max_output_tokens: int = MAX_OUTPUT_TOKENS  # caps the reply part of a reservation


@dataclass(frozen=True)
class Group:
    name: str
    models: tuple[ModelRef, ...]
    strategy: str = "lowest-usage"
    hedge_after: float | None = None
    affinity_ttl: float = 3600.0
    reserve: float = 0.0  # share of each limited key's rpm/tpm kept for high priority
    mode: Tier = "balanced"
    latency_probe_after: float = 60.0
    headroom_weights: Mapping[str, tuple[float, float, float]] = field(
        default_factory=lambda: dict(HEADROOM_WEIGHTS)
    )
    # The strategy's class, or a user policy object: imported (and instantiated) at load.
    policy: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ClientKey:
    name: str
    key: str
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: Literal["day", "month"] = "day"
    priority: Lane | None = None  # default lane and ceiling; None: normal, may ask for any
    groups: tuple[str, ...] | None = None  # the groups it may use; None: all


@dataclass(frozen=True)
class Retry:
    attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 5.0
    wait: float = 0.0


@dataclass(frozen=True)
class Breaker:
    failures: int = 5
    cooldown: float = 30.0


@dataclass(frozen=True)
class Semantic:
    embedder: str = "hashing"  # the built-in n-gram hashing, or a group serving embeddings
    threshold: float = 0.95


@dataclass(frozen=True)
class Cache:
    backend: Literal["none", "memory", "redis"] = "none"
    ttl: float = 3600.0
    max_entries: int = 10000
    max_entry_bytes: int = 1024 * 1024
    scope: Literal["client", "shared"] = "client"
    groups: tuple[str, ...] = ("*",)
    coalesce: bool = True
    semantic: Semantic | None = None
    redis_url: str | None = None  # None: state.redis_url


@dataclass(frozen=True)
class State:
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "llm-router"
    cluster: bool = False  # redis_url names one node of a Redis Cluster
    refresh: float = 0.05  # seconds between reads of the other routers' loads and health


@dataclass(frozen=True)
class Cors:
    allow_origins: tuple[str, ...] = ("*",)
    allow_credentials: bool = False


@dataclass(frozen=True)
class Compression:
    enabled: bool = True
    min_bytes: int = 1024


@dataclass(frozen=True)
class Logging:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class Config:
    groups: tuple[Group, ...]
    providers: tuple[Provider, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    client_keys: tuple[ClientKey, ...] = ()
    request_penalty: float = 0.0
    error_penalty: float = 0.0
    usage_window: float = 0.0
    predict_horizon: float = 10.0
    retry: Retry = Retry()
    breaker: Breaker = Breaker()
    cache: Cache = Cache()
    state: State = State()
    cors: Cors = Cors()
    compression: Compression = Compression()
    usage_log: str | None = None
    logging: Logging = Logging()
    shutdown_timeout: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_reply_bytes: int = 64 * 1024 * 1024  # a larger non-streamed upstream reply is a 502
    read_timeout: float = 60.0  # for a client's request headers, and between body chunks
    trust_env: bool = False  # HTTPS_PROXY / NO_PROXY / .netrc for upstream calls
    source: str = "<dict>"  # where it came from, for logs

    def provider(self, name: str) -> Provider:
        return next(p for p in self.providers if p.name == name)

    @property
    def auth_required(self) -> bool:
        return bool(self.client_keys)


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    return parse(configfile.read(Path(path)), env, source=str(path))


def parse(tree: Any, env: Mapping[str, str] | None = None, *, source: str = "<dict>") -> Config:
    errors: list[str] = []
    tree = substitute(tree, os.environ if env is None else env, errors)
    top = Reader(tree, "", errors)
    providers = tuple(_provider(path, item, errors) for path, item in top.items("providers"))
    names = [p.name for p in providers]
    _duplicates("providers", "provider", names, errors)
    groups = tuple(_group(path, item, names, errors) for path, item in top.items("groups"))
    gnames = [g.name for g in groups]
    _duplicates("groups", "group", gnames, errors)
    if not groups and "groups" not in top.data:
        errors.append("groups: is required")

    clients: list[ClientKey] = []
    single = top.text("api_key", None)
    if single:  # `api_key: ${KEY:-}` left empty means "no key", as if it were absent
        clients.append(ClientKey(name="default", key=single))
    for path, item in top.items("api_keys"):
        c = _client_key(path, item, errors)
        if any(c.name == o.name for o in clients):
            errors.append(f"{path}.name: duplicate client key name {show(c.name)}")
        if not c.key and isinstance(item, Mapping):
            errors.append(f"{path}.key: must not be empty")
        for j, g in enumerate(c.groups or ()):
            if g not in gnames:
                errors.append(f"{path}.groups[{j}]: no group named {show(g)}")
        clients.append(c)

    cfg = Config(
        groups=groups,
        providers=providers,
        host=top.text("host", "127.0.0.1"),
        port=top.num("port", 8080, integer=True),
        client_keys=tuple(clients),
        request_penalty=top.num("request_penalty", 0.0),
        error_penalty=top.num("error_penalty", 0.0),
        usage_window=top.num("usage_window", 0.0),
        predict_horizon=top.num("predict_horizon", 10.0),
        retry=_retry(top.mapping("retry")),
        breaker=_breaker(top.mapping("breaker")),
        cache=_cache(top.mapping("cache")),
        state=_state(top.mapping("state")),
        cors=_cors(top.mapping("cors")),
        compression=_compression(top.mapping("compression")),
        usage_log=top.text("usage_log", None),
        logging=_logging(top.mapping("logging")),
        shutdown_timeout=top.num("shutdown_timeout", 30.0),
        max_body_bytes=top.num("max_body_bytes", 32 * 1024 * 1024, integer=True, minimum=1),
        max_reply_bytes=top.num("max_reply_bytes", 64 * 1024 * 1024, integer=True, minimum=1),
        read_timeout=top.num("read_timeout", 60.0, above=True),
        trust_env=top.flag("trust_env", False),
        source=source,
    )
    top.done()
    _check_cache(cfg, errors)
    if cfg.port > 65535:
        errors.append(f"port: must be an integer from 0 to 65535, got {cfg.port}")
    if not cfg.host or any(c.isspace() or not c.isprintable() for c in cfg.host):
        errors.append("host: must be a host name or an IP address")
    if errors:
        raise ConfigError(errors)
    return cfg


def _provider(path: str, item: Any, errors: list[str]) -> Provider:
    r = Reader(item, path, errors)
    name = r.name("name")
    ptype = r.choice("type", PROVIDER_TYPES, "openai")
    default_url = {"mock": "", "anthropic": ANTHROPIC_URL}.get(ptype)
    base_url = r.text("base_url", default_url) if default_url is not None else r.text("base_url")
    speaks: Api = "anthropic" if ptype == "anthropic" else "openai"
    api = r.choice("api", API_NAMES, speaks)
    if ptype != "mock" and "api" in r.data:
        r.fail(r.at("api"), "only a type: mock provider takes api (the type says it)")
    if base_url:
        check_url(r, "base_url", base_url)
    keys: list[ProviderKey] = []
    for i, (kpath, k) in enumerate(r.items("api_keys")):
        label = f"{name}#{i}"
        if isinstance(k, str):
            keys.append(ProviderKey(secret=k, label=label))
            continue
        kr = Reader(k, kpath, errors)
        keys.append(
            ProviderKey(
                secret=kr.text("key"),
                label=kr.name("name", label),
                rpm=kr.num("rpm", None, integer=True, minimum=1),
                tpm=kr.num("tpm", None, integer=True, minimum=1),
            )
        )
        kr.done()
    if not keys:
        # A provider without keys is one target that sends no Authorization header.
        keys.append(ProviderKey(secret=None, label=f"{name}#0"))
    provider = Provider(
        name=name,
        type=ptype,
        base_url=base_url.rstrip("/"),
        keys=tuple(keys),
        timeout=r.num("timeout", 600.0, above=True),
        connect_timeout=r.num("connect_timeout", 10.0, above=True),
        first_byte_timeout=r.num("first_byte_timeout", 60.0, above=True),
        idle_timeout=r.num("idle_timeout", 60.0, above=True),
        headers=r.str_map("headers"),
        api=api,
        latency_ms=r.num("latency_ms", 0.0),
        failure_rate=r.num("failure_rate", 0.0),
        verify_tls=r.flag("verify_tls", True),
        ca_file=r.text("ca_file", None),
    )
    check_headers(r, "headers", provider.headers)
    if provider.ca_file is not None:
        problem = tls.check_ca_file(provider.ca_file)
        if problem:
            r.fail(r.at("ca_file"), problem)
    if provider.failure_rate > 1:
        r.fail(r.at("failure_rate"), f"must be a number from 0 to 1, got {provider.failure_rate}")
    r.done()
    return provider


def _group(path: str, item: Any, providers: list[str], errors: list[str]) -> Group:
    r = Reader(item, path, errors)
    name = r.name("name")
    models: list[ModelRef] = []
    for mpath, m in r.items("models", required=True):
        mr = Reader(m, mpath, errors)
        ref = ModelRef(
            provider=mr.text("provider"),
            name=mr.name("name"),
            weight=mr.num("weight", 1.0),
            input_cost=mr.num("input_cost", 0.0),
            output_cost=mr.num("output_cost", 0.0),
            priority=mr.num("priority", 0, integer=True),
            tier=mr.choice("tier", TIERS, "balanced"),
            priced=mr.has("input_cost") or mr.has("output_cost"),
            max_output_tokens=mr.num(
                "max_output_tokens", MAX_OUTPUT_TOKENS, integer=True, minimum=1
            ),
        )
        if mr.ok and ref.provider and ref.provider not in providers:
            known = ", ".join(p for p in providers if p) or "none"  # labels: shown anyway
            mr.fail(mr.at("provider"), f"no provider named {show(ref.provider)} ({known} exist)")
        mr.done()
        models.append(ref)
    if r.ok and not models and "models" in r.data:
        r.fail(r.at("models"), "must list at least one model")
    strategy = r.text("strategy", "lowest-usage")
    from router.policies import PolicyError, resolve  # the policies import this module

    try:
        policy = resolve(strategy)
    except PolicyError as exc:
        r.fail(r.at("strategy"), str(exc))
        policy = None
    reserve = r.num("reserve", 0.0)
    if reserve >= 1:
        r.fail(r.at("reserve"), f"must be a number from 0 to below 1, got {reserve:g}")
    group = Group(
        name=name,
        models=tuple(models),
        strategy=strategy,
        hedge_after=r.num("hedge_after", None, above=True),
        affinity_ttl=r.num("affinity_ttl", 3600.0, above=True),
        reserve=reserve,
        mode=r.choice("mode", TIERS, "balanced"),
        latency_probe_after=r.num("latency_probe_after", 60.0, above=True),
        headroom_weights=_headroom_weights(r),
        policy=policy,
    )
    r.done()
    return group


def _headroom_weights(r: Reader) -> dict[str, tuple[float, float, float]]:
    out = dict(HEADROOM_WEIGHTS)
    w = r.mapping("headroom_weights")
    for lane in LANES:
        v = w.raw(lane)
        if v is None or v is _MISSING:
            continue
        numbers = isinstance(v, list) and len(v) == 3
        if not numbers or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in v
        ):
            w.fail(w.at(lane), f"must be a list of three numbers >= 0, got {show(v)}")
            continue
        out[lane] = (float(v[0]), float(v[1]), float(v[2]))
    w.done()
    return out


def _client_key(path: str, item: Any, errors: list[str]) -> ClientKey:
    r = Reader(item, path, errors)
    key = ClientKey(
        name=r.name("name"),
        key=r.text("key"),
        rpm=r.num("rpm", None, integer=True, minimum=1),
        tpm=r.num("tpm", None, integer=True, minimum=1),
        budget_usd=r.num("budget_usd", None),
        budget_period=r.choice("budget_period", PERIODS, "day"),
        priority=r.choice("priority", LANES, None),
        groups=_names(r, "groups"),
    )
    r.done()
    return key


def _names(r: Reader, key: str) -> tuple[str, ...] | None:
    if not r.has(key):
        r.raw(key)
        return None
    out = []
    for path, v in r.items(key):
        if isinstance(v, str) and v:
            out.append(v)
        else:
            r.fail(path, f"must be a group name, got {show(v)}")
    return tuple(out)


def _retry(r: Reader) -> Retry:
    out = Retry(
        attempts=r.num("attempts", 3, integer=True, minimum=1),
        backoff=r.num("backoff", 0.1),
        max_backoff=r.num("max_backoff", 5.0),
        wait=r.num("wait", 0.0),
    )
    r.done()
    return out


def _breaker(r: Reader) -> Breaker:
    out = Breaker(
        failures=r.num("failures", 5, integer=True, minimum=1),
        cooldown=r.num("cooldown", 30.0),
    )
    r.done()
    return out


def _cache(r: Reader) -> Cache:
    groups: list[str] = []
    for path, g in r.items("groups"):
        if isinstance(g, str) and g:
            groups.append(g)
        else:
            r.fail(path, f"must be a group name or *, got {show(g)}")
    semantic = None
    if r.has("semantic"):
        s = r.mapping("semantic")
        threshold = s.raw("threshold") if s.has("threshold") else 0.95
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not (0 <= threshold <= 1)
        ):
            s.fail(s.at("threshold"), f"must be between 0 and 1, got {show(threshold)}")
            threshold = 0.95
        semantic = Semantic(embedder=s.text("embedder", "hashing"), threshold=float(threshold))
        s.done()
    else:
        r.raw("semantic")
    out = Cache(
        backend=r.choice("backend", CACHE_BACKENDS, "none"),
        ttl=r.num("ttl", 3600.0, above=True),
        max_entries=r.num("max_entries", 10000, integer=True, minimum=1),
        max_entry_bytes=r.num("max_entry_bytes", 1024 * 1024, integer=True, minimum=1),
        scope=r.choice("scope", CACHE_SCOPES, "client"),
        groups=tuple(groups) if "groups" in r.data else ("*",),
        coalesce=r.flag("coalesce", True),
        semantic=semantic,
        redis_url=r.text("redis_url", None),
    )
    r.done()
    return out


def _check_cache(cfg: Config, errors: list[str]) -> None:
    """What the cache names must exist: its groups, and an embedder group that can embed."""
    names = {g.name: g for g in cfg.groups}
    for i, name in enumerate(cfg.cache.groups):
        if name != "*" and name not in names:
            errors.append(f"cache.groups[{i}]: no group named {name!r}")
    semantic = cfg.cache.semantic
    if semantic is None or semantic.embedder == "hashing":
        return
    group = names.get(semantic.embedder)
    apis = {p.name: p.api for p in cfg.providers}
    if group is None:
        errors.append(
            f"cache.semantic.embedder: must be hashing or a group name, "
            f"no group named {semantic.embedder!r}"
        )
    elif not any(apis.get(m.provider) == "openai" for m in group.models):  # Anthropic's has none
        errors.append(f"cache.semantic.embedder: group {semantic.embedder!r} serves no embeddings")


def _state(r: Reader) -> State:
    out = State(
        backend=r.choice("backend", STATE_BACKENDS, "memory"),
        redis_url=r.text("redis_url", "redis://127.0.0.1:6379/0"),
        prefix=r.text("prefix", "llm-router"),
        cluster=r.flag("cluster", False),
        refresh=r.num("refresh", 0.05, above=True),
    )
    if not out.redis_url.startswith(("redis://", "rediss://", "unix://")):
        r.fail(r.at("redis_url"), "must start with redis://, rediss:// or unix://")
    r.done()
    return out


def _cors(r: Reader) -> Cors:
    origins: list[str] = []
    for path, o in r.items("allow_origins"):
        if isinstance(o, str) and o:
            origins.append(o.rstrip("/"))
        else:
            r.fail(path, f"must be an origin like https://app.example.com or *, got {show(o)}")
    out = Cors(
        allow_origins=tuple(origins) if "allow_origins" in r.data else ("*",),
        allow_credentials=r.flag("allow_credentials", False),
    )
    if out.allow_credentials and "*" in out.allow_origins:
        r.fail(r.at("allow_credentials"), "cannot be true while allow_origins has *")
    r.done()
    return out


def _compression(r: Reader) -> Compression:
    out = Compression(
        enabled=r.flag("enabled", True),
        min_bytes=r.num("min_bytes", 1024, integer=True),
    )
    r.done()
    return out


def _logging(r: Reader) -> Logging:
    out = Logging(
        level=r.choice("level", LEVELS, "info"),
        format=r.choice("format", FORMATS, "text"),
    )
    r.done()
    return out


PERIODS: tuple[Literal["day", "month"], ...] = ("day", "month")
CACHE_BACKENDS: tuple[Literal["none", "memory", "redis"], ...] = ("none", "memory", "redis")
CACHE_SCOPES: tuple[Literal["client", "shared"], ...] = ("client", "shared")
STATE_BACKENDS: tuple[Literal["memory", "redis"], ...] = ("memory", "redis")
LEVELS: tuple[Literal["debug", "info", "warning", "error"], ...] = (
    "debug",
    "info",
    "warning",
    "error",
)
FORMATS: tuple[Literal["text", "json"], ...] = ("text", "json")


def _duplicates(section: str, what: str, names: list[str], errors: list[str]) -> None:
    for i, name in enumerate(names):
        if name and name in names[:i]:
            first = names.index(name)
            errors.append(f"{section}[{i}].name: duplicate {what} name, as {section}[{first}]")


def check_url(r: Reader, key: str, url: str) -> None:
    """An http(s) URL with a host, or an error that does not repeat it (it may hold a token)."""
    try:
        parsed = URL(url)
        ok = parsed.scheme in ("http", "https") and bool(parsed.host)
    except (ValueError, TypeError):
        ok = False
    if not ok:
        r.fail(r.at(key), "must be an http:// or https:// URL with a host")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field names


def check_headers(r: Reader, key: str, headers: Mapping[str, str]) -> None:
    """Header names and values a request can carry: no line breaks that would split one."""
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            r.fail(r.at(key), f"header {show(name)}: not a valid header name")
        elif any(c in value for c in "\r\n\0"):
            r.fail(r.at(key), f"header {show(name)}: the value must not hold line breaks or NUL")
