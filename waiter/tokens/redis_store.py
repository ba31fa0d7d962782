"""The Redis token store: every router sees every other router's token writes within milliseconds.

Keys under ``prefix`` (the router uses ``waiter:<cluster name>:tokens:``):
  data            hash name -> record JSON
  etag            hash name -> ETag (what compare-and-set compares)
  owner:<owner>   hash name -> index entry JSON; ``owners`` is the set of owners
  version         counter bumped by every write
  changed         channel on which every write publishes ``<version> <name>``
  epoch           a random id set when a router first finds the keys absent: a Redis that lost its data (restarted
                  without persistence, flushed, failed over to an empty replica) has none, or another router's new one

A router that finds the epoch missing or changed writes back every record it holds, the newest
``last-update-time`` winning over what is there already, so tokens survive an emptied Redis as long as one router
that knew them is running: serving never degrades to 404 ``Couldn't find token``. Run Redis with AOF in production
all the same (README): a token written while no router cached it is only as durable as Redis.

The request path never waits on Redis: it reads the local cache, which a follower task keeps current from the
channel, and re-reads in full whenever the version counter shows a missed message (after a reconnect, say).
Every Redis call has a deadline. When Redis is down the cache keeps serving and ``status()`` says so; API writes
fail with StoreUnavailable until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Collection, Mapping
from typing import Any, TypeVar

from redis.exceptions import RedisError

from waiter.aio import cancel_and_wait, raise_if_cancelling
from waiter.redis_client import RedisConnection
from waiter.settings import redact_url
from waiter.text import failure_reason
from waiter.tokens.store import (
    CachedStore,
    IndexEntry,
    StaleWrite,
    StoreStatus,
    StoreUnavailable,
    TokenRecord,
    make_record,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Compare-and-set of one token, its owner index entries and the version counter, atomically.
# KEYS: data hash, etag hash, owners set, version key. ARGV: name, expected etag ('' = absent), new JSON
# ('' = remove), new etag ('' = remove), new owner ('' = none), old owner ('' = none), index entry JSON, owner key
# prefix, channel.
# Safe to retry (the client resends a command whose connection broke, waiter.redis_client): a run whose answer was
# lost left the new etag (an etag is a hash of the content) or, for a removal, no etag; finding exactly that is
# reported as done instead of as a conflict with our own write. Done by someone else, the outcome is the same.
_CAS = """
local name = ARGV[1]
local current = redis.call('HGET', KEYS[2], name)
if not current then current = '' end
if current ~= ARGV[2] then
  if current == ARGV[4] then return {1, redis.call('GET', KEYS[4]) or '0'} end
  return {0, current}
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], name)
  redis.call('HDEL', KEYS[2], name)
else
  redis.call('HSET', KEYS[1], name, ARGV[3])
  redis.call('HSET', KEYS[2], name, ARGV[4])
end
if ARGV[6] ~= '' then redis.call('HDEL', ARGV[8] .. ARGV[6], name) end
if ARGV[5] ~= '' then
  redis.call('HSET', ARGV[8] .. ARGV[5], name, ARGV[7])
  redis.call('SADD', KEYS[3], ARGV[5])
end
local version = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[9], version .. ' ' .. name)
return {1, tostring(version)}
"""


# Write back one record a router held when Redis lost its data, unless the stored one is as new or newer.
# Safe to retry: a second run finds the record it wrote as new as itself and writes nothing (it answers 0, so a
# retried write-back is counted as not restored in the log line, nothing worse).
# KEYS: data hash, etag hash, owners set, version key. ARGV: name, JSON, etag, owner ('' = none), index entry JSON,
# owner key prefix, channel, last-update-time (millis, 0 when unknown). Returns 1 when written.
_RESTORE = """
local name = ARGV[1]
local current = redis.call('HGET', KEYS[1], name)
if current then
  local ok, stored = pcall(cjson.decode, current)
  local stored_time = 0
  if ok and type(stored) == 'table' then stored_time = tonumber(stored['last-update-time']) or 0 end
  if stored_time >= tonumber(ARGV[8]) then return 0 end
  local old_owner = ok and type(stored) == 'table' and (stored['owner'] or stored['run-as-user'])
  if type(old_owner) == 'string' and old_owner ~= ARGV[4] then redis.call('HDEL', ARGV[6] .. old_owner, name) end
end
redis.call('HSET', KEYS[1], name, ARGV[2])
redis.call('HSET', KEYS[2], name, ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', ARGV[6] .. ARGV[4], name, ARGV[5])
  redis.call('SADD', KEYS[3], ARGV[4])
end
local version = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[7], version .. ' ' .. name)
return 1
"""


_WRITE_BACK_BATCH = 500  # records per pipelined round trip when writing back


def _update_time(record: TokenRecord) -> int:
    updated = record.data.get("last-update-time")
    return int(updated) if isinstance(updated, int | float) and not isinstance(updated, bool) else 0


class RedisTokenStore(CachedStore):
    kind = "redis"

    def __init__(
        self, url: str, *, prefix: str = "waiter:tokens:", timeout: float = 2.0, poll_interval: float = 1.0
    ) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.timeout = timeout  # deadline of every Redis call
        self.poll_interval = poll_interval  # how often an idle follower double-checks the version counter
        # health_check_interval: a pooled connection idle that long is PINGed before use, so a connection the old
        # server closed is found by the PING (and replaced: waiter.redis_client's retry) before a write is sent on it.
        self._connection = RedisConnection(url, timeout=timeout, health_check_interval=0.2)
        self._client = self._connection.client
        self._cas = self._client.register_script(_CAS)
        self._restore = self._client.register_script(_RESTORE)
        self._epoch: str | None = None  # the epoch of the data the cache reflects; None before the first load
        self._version = -1  # the version counter value the cache reflects
        self._error: str | None = "not connected yet"
        self._down_since: float | None = time.time()
        self._first_attempt = asyncio.Event()  # set once the follower has loaded or failed to
        self._follower: asyncio.Task[None] | None = None
        self._closing = False

    def _key(self, suffix: str) -> str:
        return self.prefix + suffix

    # -- the API side: authoritative reads and compare-and-set writes --------------------------------------------

    async def _call(self, awaitable: Awaitable[T], what: str) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            log.warning("token store at %s: cannot %s: %s", redact_url(self.url), what, exc)
            raise StoreUnavailable(
                f"The token store (Redis at {redact_url(self.url)}) is unavailable, so the router cannot {what}: "
                f"{failure_reason(exc)}. Tokens already known keep being served; try again when Redis is back."
            ) from exc

    async def read(self, name: str) -> TokenRecord | None:
        raw = await self._call(self._client.hget(self._key("data"), name), f"read token {name}")
        return make_record(name, json.loads(raw)) if raw is not None else None

    async def write(self, name: str, data: Mapping[str, Any] | None, *, expected: TokenRecord | None) -> None:
        record = make_record(name, dict(data)) if data is not None else None
        args = [
            name,
            expected.etag if expected else "",
            json.dumps(record.data, sort_keys=True) if record else "",
            record.etag if record else "",
            (record.owner or "") if record else "",
            (expected.owner or "") if expected else "",
            IndexEntry.of(record).dumps() if record else "",
            self._key("owner:"),
            self._key("changed"),
        ]
        keys = [self._key("data"), self._key("etag"), self._key("owners"), self._key("version")]
        ok, value = await self._call(self._cas(keys=keys, args=args), f"save token {name}")
        if not int(ok):
            raise StaleWrite(name, str(value))
        self._remember(name, record)  # this router sees its own write at once
        if int(value) == self._version + 1:
            self._version = int(value)
        if self._connection.sentinel:
            await self._replicate(name)

    async def _replicate(self, name: str) -> None:
        """Behind Sentinel, answer a write once a replica has it too, so a failover right after does not lose it.

        Replication is asynchronous: without this, a token saved just before the primary dies is gone with it.
        A replica that does not confirm in time does not undo the write (the primary has it); it is logged.
        """
        wait_ms = max(1, int(self.timeout * 500))
        try:
            replicas = await self._call(self._client.wait(1, wait_ms), f"replicate token {name}")
        except StoreUnavailable as error:
            log.warning("token %s was saved on the primary; no replica confirmed it: %s", name, error)
            return
        if int(replicas) < 1:
            log.warning("token %s was saved on the primary, but no replica confirmed it within %d ms", name, wait_ms)

    async def index(self, owners: Collection[str] | None = None) -> list[IndexEntry]:
        return await self._call(self._index(owners), "list tokens")

    async def _index(self, owners: Collection[str] | None) -> list[IndexEntry]:
        if owners is None:
            chosen = sorted(str(owner) for owner in await self._client.smembers(self._key("owners")))
        else:
            chosen = list(owners)
        async with self._client.pipeline(transaction=False) as pipe:
            for owner in chosen:
                pipe.hgetall(self._key(f"owner:{owner}"))
            tables = await pipe.execute()
        return [
            IndexEntry.loads(str(token), owner, str(text))
            for owner, table in zip(chosen, tables, strict=True)
            for token, text in table.items()
        ]

    async def reindex(self) -> int:
        return await self._call(self._reindex(), "re-index tokens")

    async def _reindex(self) -> int:
        raw = await self._client.hgetall(self._key("data"))
        tables: dict[str, dict[Any, Any]] = {}
        for name, text in raw.items():
            record = make_record(str(name), json.loads(text))
            if record.owner:
                tables.setdefault(record.owner, {})[record.name] = IndexEntry.of(record).dumps()
        old_owners = [str(owner) for owner in await self._client.smembers(self._key("owners"))]
        # One transaction: readers see the old index or the new one, never a half-built one.
        async with self._client.pipeline(transaction=True) as pipe:
            for owner in old_owners:
                pipe.delete(self._key(f"owner:{owner}"))
            pipe.delete(self._key("owners"))
            for owner, table in tables.items():
                pipe.hset(self._key(f"owner:{owner}"), mapping=table)
                pipe.sadd(self._key("owners"), owner)
            await pipe.execute()
        return len(raw)

    # -- the follower: keeps the cache current ------------------------------------------------------------------

    async def start(self) -> None:
        """Start following; wait for the first load so the router starts with the stored tokens.

        An unreachable Redis does not stop the router: it starts with file tokens and catches up when Redis answers.
        """
        self._follower = asyncio.create_task(self._follow(), name="redis token follower")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout * 2):
                await self._first_attempt.wait()
        if self._error is not None:
            log.warning(
                "token store at %s not reachable yet (%s); serving file tokens only until it is",
                redact_url(self.url),
                self._error,
            )

    async def close(self) -> None:
        self._closing = True
        if self._follower is not None:
            await cancel_and_wait(self._follower, self.timeout)
        await self._connection.aclose()

    async def _follow(self) -> None:
        backoff = 0.05
        while not self._closing:
            try:
                await self._follow_once()
            except (RedisError, OSError, TimeoutError) as exc:
                raise_if_cancelling()  # a cancellation a timeout below turned into TimeoutError
                if self._closing:
                    return
                # retry at once after a connection that worked, slower and slower while Redis stays away
                backoff = 0.05 if self._error is None else min(backoff * 2, 1.0)
                self._mark_down(exc)
                self._first_attempt.set()
            await asyncio.sleep(backoff)

    async def _follow_once(self) -> None:
        pubsub = self._client.pubsub()
        try:
            async with asyncio.timeout(self.timeout):
                await pubsub.subscribe(self._key("changed"))
                await self._reload()  # after subscribing, so no write between the two is missed
            while not self._closing:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.poll_interval)
                async with asyncio.timeout(self.timeout):
                    if message is None:
                        await self._check_version()
                    else:
                        await self._apply(str(message["data"]))
                self._mark_up()  # also clears a failure an API call saw while this connection kept working
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _reload(self) -> None:
        await self._check_epoch()
        version = await self._client.get(self._key("version"))
        table = await self._client.hgetall(self._key("data"))
        self._replace_all({str(name): make_record(str(name), json.loads(raw)) for name, raw in table.items()})
        self._version = int(version or 0)
        self._mark_up()
        self._first_attempt.set()

    async def _check_epoch(self) -> None:
        """Write back what the cache holds when Redis lost its data since the cache was filled."""
        epoch = await self._client.get(self._key("epoch"))
        epoch = None if epoch is None else str(epoch)
        if self._epoch is not None and epoch != self._epoch and self._cache:
            restored = await self._write_back()
            log.warning(
                "token store at %s lost its data (epoch %s, was %s): wrote back %d of the %d token(s) this router "
                "held; Redis had the rest as new or newer",
                redact_url(self.url),
                epoch or "missing",
                self._epoch,
                restored,
                len(self._cache),
            )
        if epoch is None:
            await self._client.set(self._key("epoch"), uuid.uuid4().hex, nx=True)
            epoch = str(await self._client.get(self._key("epoch")))
        self._epoch = epoch

    async def _write_back(self) -> int:
        """Restore every cached record (newest wins, in the script); pipelined, so thousands cost a round trip."""
        keys = [self._key("data"), self._key("etag"), self._key("owners"), self._key("version")]
        restored = 0
        records = list(self._cache.values())
        for start in range(0, len(records), _WRITE_BACK_BATCH):
            async with self._client.pipeline(transaction=False) as pipe:
                for record in records[start : start + _WRITE_BACK_BATCH]:
                    args = [
                        record.name,
                        json.dumps(record.data, sort_keys=True),
                        record.etag,
                        record.owner or "",
                        IndexEntry.of(record).dumps(),
                        self._key("owner:"),
                        self._key("changed"),
                        str(_update_time(record)),
                    ]
                    await self._restore(keys=keys, args=args, client=pipe)
                restored += sum(int(done) for done in await pipe.execute())
        return restored

    async def _check_version(self) -> None:
        version = int(await self._client.get(self._key("version")) or 0)
        if version != self._version:
            await self._reload()

    async def _apply(self, message: str) -> None:
        version_text, _, name = message.partition(" ")
        version = int(version_text)
        if version > self._version + 1:
            await self._reload()  # a message went missing: only a full read is sure to catch up
            return
        raw = await self._client.hget(self._key("data"), name)
        self._remember(name, make_record(name, json.loads(raw)) if raw is not None else None)
        self._version = max(self._version, version)

    # -- health ---------------------------------------------------------------------------------------------------

    def _mark_down(self, exc: BaseException) -> None:
        self.errors += 1
        if self._error is None:
            log.error("token store at %s unavailable: %s; serving cached tokens", redact_url(self.url), _describe(exc))
            self._down_since = time.time()
        self._error = failure_reason(exc)  # /status shows it: our words; the log line above has the library's

    def _mark_up(self) -> None:
        if self._error is not None:
            log.info("token store at %s connected; %d token(s) cached", redact_url(self.url), len(self._cache))
        self._error = None
        self._down_since = None

    def status(self) -> StoreStatus:
        return StoreStatus(
            kind=self.kind,
            connected=self._error is None,
            tokens=len(self._cache),
            error=self._error,
            down_since=self._down_since,
            location=redact_url(self.url),
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the deadline"
    return str(exc).rstrip(".") or type(exc).__name__  # the caller ends the sentence
