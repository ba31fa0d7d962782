"""Connecting to Redis: one server by URL, or the primary of a Sentinel-managed group.

``redis://``, ``rediss://`` and ``unix://`` URLs name one server (redis-py's ``from_url``).
``redis+sentinel://[:password@]host:port,host:port/service-name[/db]`` names Sentinels to ask for the primary of
``service-name``: redis-py's Sentinel support connects to whatever primary the Sentinels report, and a connection
that breaks (the primary died) or meets a demoted primary (READONLY) is replaced by one to the new primary. The
password, if any, is the data servers' (the Sentinels are asked without one).

Redis Cluster is not supported: the token store's compare-and-set script and the slot-lease script touch keys
that hash to different slots, so they could not run on a cluster without redesigning every key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

SENTINEL_SCHEME = "redis+sentinel://"
# Attempts after the first when a connection breaks, and the pause before each (jittered, doubling up to the cap).
RETRIES = 2
RETRY_BACKOFF_SECS = (0.01, 0.1)
SERVER_SCHEMES = ("redis://", "rediss://", "unix://")
SCHEMES = (*SERVER_SCHEMES, SENTINEL_SCHEME)
EXAMPLE = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/mymaster/0"
_HOST_PORT = re.compile(r"(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\],/@]+):(?P<port>\d{1,5})")
_SERVICE = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The Sentinels, service and db of a ``redis+sentinel://`` URL; ValueError says what is wrong and allowed."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"it must start with {SENTINEL_SCHEME}")
    rest = url.removeprefix(SENTINEL_SCHEME)
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels: list[tuple[str, int]] = []
    for part in netloc.split(","):
        match = _HOST_PORT.fullmatch(part.strip())
        if match is None or not 0 < int(match["port"]) < 65536:
            raise ValueError(f"sentinel {part!r} must be host:port with a port from 1 to 65535 (e.g. {EXAMPLE})")
        sentinels.append((match["host"].strip("[]"), int(match["port"])))
    segments = [s for s in path.split("/") if s] if path else []
    if not segments or len(segments) > 2 or not _SERVICE.fullmatch(segments[0]):
        raise ValueError(f"its path must be /service-name or /service-name/db (e.g. {EXAMPLE})")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError(f"its db {segments[1]!r} must be a number 0 or more")
        db = int(segments[1])
    return SentinelTarget(tuple(sentinels), segments[0], db, username, password)


def check_url(url: str) -> str | None:
    """None if ``url`` can be connected to, else why not (a sentence fragment)."""
    if url.startswith(SENTINEL_SCHEME):
        try:
            parse_sentinel_url(url)
        except ValueError as error:
            return str(error)
        return None
    if url.startswith(SERVER_SCHEMES) and len(url) > len("redis://"):
        return None
    return f"it must start with {', '.join(SCHEMES)}"


def retry_policy() -> Retry:
    """How a command that met a broken connection is sent again: on a new connection, a few times, soon.

    A Redis restart leaves every pooled connection dead, and the pool cannot tell them all from live ones before
    use (the end of stream may not have been read yet), so without this the first command on each of them fails.
    redis-py's ``from_url`` and Sentinel's ``master_for`` retry nothing unless given a policy, hence an explicit one.
    Only connection errors are retried: a timeout means a slow or unreachable server, which a second try within
    the same deadline would not help. Retried commands must be safe to run twice (one that reached the server may
    have run before its answer was lost): every command and script the router sends is, see each script's comment.
    The callers' own deadlines still bound the whole call, retries included.
    """
    base, cap = RETRY_BACKOFF_SECS
    return Retry(ExponentialWithJitterBackoff(base=base, cap=cap), RETRIES, (RedisConnectionError,))


class RedisConnection:
    """A redis-py client plus what it took to find the server (the Sentinels, closed with it)."""

    def __init__(self, url: str, *, timeout: float, health_check_interval: float, decode_responses: bool = True):
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "health_check_interval": health_check_interval,
            "decode_responses": decode_responses,
            "retry": retry_policy(),
        }
        self._sentinel: Sentinel | None = None
        self.service: str | None = None
        self.client: redis.Redis
        if url.startswith(SENTINEL_SCHEME):
            target = parse_sentinel_url(url)
            self.service = target.service
            sentinel_options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            self._sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
            self.client = self._sentinel.master_for(
                target.service, db=target.db, username=target.username, password=target.password, **options
            )
        else:
            self.client = redis.Redis.from_url(url, **options)
        self._primary: tuple[str, int] | None = None
        self.primary_changes = 0  # times the primary seen by this client changed (Sentinel failovers)

    @property
    def sentinel(self) -> bool:
        """True when the server is found through Sentinel (a primary with replicas that can take over)."""
        return self._sentinel is not None

    def primary(self) -> str | None:
        """host:port of the primary this client last connected to (Sentinel only; None before the first call)."""
        pool = self.client.connection_pool
        if not isinstance(pool, SentinelConnectionPool) or pool.master_address is None:
            return None
        address = (str(pool.master_address[0]), int(pool.master_address[1]))
        if address != self._primary:
            if self._primary is not None:
                self.primary_changes += 1
            self._primary = address
        return f"{address[0]}:{address[1]}"

    def describe(self) -> dict[str, Any]:
        """For /status: where the primary is and how often it moved (empty for a single server)."""
        if self._sentinel is None:
            return {}
        return {"sentinel-service": self.service, "primary": self.primary(), "primary-changes": self.primary_changes}

    async def aclose(self) -> None:
        # A Sentinel client's pool is handed in, so redis-py would leave its connections open without being told.
        await self.client.aclose(close_connection_pool=True)
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()


__all__ = ["SCHEMES", "SENTINEL_SCHEME", "RedisConnection", "SentinelTarget", "check_url", "parse_sentinel_url"]
