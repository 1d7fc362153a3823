"""Turn a streamtasks URL into a redis-py client: redis://, rediss://, unix://, memory://, embedded://."""

from __future__ import annotations

import os
import re
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamtasks.errors import ConfigurationError

DEFAULT_URL = "redis://localhost:6379/0"

#: The longest blocking read streamtasks makes (seconds): a worker's read, a wait for a result.
MAX_BLOCK = 5.0
#: Connections one event loop opens to Redis at most; more calls in flight wait for one.
ASYNC_CONNECTIONS = 64
#: Outlasts MAX_BLOCK, so a read that is merely waiting is never mistaken for a dead connection.
SOCKET_TIMEOUT = 15.0

# memory:// servers by name: the fakeredis server, and the connection class its clients use.
_memory_servers: dict[str, tuple[Any, type | None]] = {}
_memory_lock = threading.Lock()


def resolve_url(url: str | None) -> str:
    return url or os.environ.get("STREAMTASKS_URL") or DEFAULT_URL


def masked(url: str) -> str:
    """The URL with any password replaced by ***, fit for a log line."""
    parts = urlsplit(url)
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    if not parts.password and query == parts.query:
        return url
    if parts.password:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    # urlunsplit writes unix:///path as unix:/path; put the empty authority back.
    text = urlunsplit(parts._replace(query=query))
    return text if parts.netloc else text.replace(":", "://", 1)


def connect(url: str) -> redis.Redis:
    """A client for `url`. streamtasks.retrying reconnects, so redis-py itself retries nothing."""
    if _scheme(url) == "memory":
        return _memory_client(url)
    try:
        return redis.Redis.from_url(_server_url(url), retry=Retry(NoBackoff(), 0), **_options(url))
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {url!r}: {exc}") from exc


def connect_async(url: str) -> redis.asyncio.Redis:
    """A redis.asyncio client for `url`, for producers in an event loop; like `connect`."""
    if _scheme(url) == "memory":
        server, _ = _memory_server(url)
        return fakeredis_module().FakeAsyncRedis(server=server)  # type: ignore[no-any-return]
    try:
        # A blocking pool: redis-py's default one refuses a 101st connection outright, and an
        # event loop easily has more calls in flight than that.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            _server_url(url),
            max_connections=ASYNC_CONNECTIONS,
            timeout=None,
            retry=AsyncRetry(NoBackoff(), 0),
            **_options(url),
        )
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {url!r}: {exc}") from exc
    return redis.asyncio.Redis(connection_pool=pool)


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix", "memory", "embedded"):
        raise ConfigurationError(
            f"unsupported URL {url!r}: use redis://, rediss://, unix://, memory:// or embedded://"
        )
    return scheme


def _server_url(url: str) -> str:
    """The redis-py URL of a server: embedded:// starts its server and becomes its unix socket."""
    if _scheme(url) != "embedded":
        return url
    from streamtasks import embedded

    return f"unix://{embedded.ensure_server(embedded.data_dir(url))}"


def _options(url: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_connect_timeout": 5.0,
        "socket_timeout": SOCKET_TIMEOUT,
        "health_check_interval": 30,
    }
    if _scheme(url) in ("redis", "rediss"):
        options["socket_keepalive"] = True
    return options


def fakeredis_module() -> Any:
    """fakeredis, or ConfigurationError saying how to install it."""
    try:
        import fakeredis
    except ImportError:
        raise ConfigurationError(
            "memory:// and the pytest fixture need fakeredis: "
            "pip install 'streamtasks-queue[testing]'"
        ) from None
    return fakeredis


def _memory_server(url: str) -> tuple[Any, type | None]:
    fakeredis = fakeredis_module()
    name = urlsplit(url).netloc or "default"
    with _memory_lock:
        return _memory_servers.setdefault(name, (fakeredis.FakeServer(), None))


def _memory_client(url: str) -> redis.Redis:
    fakeredis = fakeredis_module()
    server, connection_class = _memory_server(url)
    if connection_class is None:
        return fakeredis.FakeRedis(server=server)  # type: ignore[no-any-return]
    return fakeredis.FakeRedis(server=server, connection_class=connection_class)  # type: ignore[no-any-return]


def fresh_memory(name: str, connection_class: type | None = None) -> None:
    """Give memory://NAME a new, empty server; its clients are built on `connection_class`, a
    fakeredis connection class, when one is given (streamtasks.testing injects faults so)."""
    server = fakeredis_module().FakeServer()
    with _memory_lock:
        _memory_servers[name] = (server, connection_class)


def reset_memory(name: str = "default") -> None:
    """Forget a memory:// server, so the next client of that name starts empty (for tests)."""
    with _memory_lock:
        _memory_servers.pop(name, None)
