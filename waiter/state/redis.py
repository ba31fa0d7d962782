"""Shared state in Redis, for several routers. Every call has a timeout and raises ``StateUnavailable`` on failure.

Keys (``<p>`` = ``waiter:<namespace>:``):
  <p>routers              set of router ids ever seen (pruned when their keys are gone, or by a clean stop)
  <p>router:<rid>         JSON info, expires unless the router heartbeats
  <p>stats:<rid>          JSON {service id: [outstanding, queued, total, last-request-time]}, expires likewise
  <p>leader               the scaling leader's router id (SET NX PX, renewed)
  <p>scaling:<sid>        the leader's smoothing state for a service (JSON)
  <p>services             hash service id -> JSON record
  <p>lease:<iid>          hash router id -> slots leased on that instance (only live routers' fields count)
  <p>blocked              hash instance id -> epoch ms until which it gets no new slots (it is being killed)
  <p>control:<kind>       hash service id -> JSON record of "overrides" or "suspended" (set through the API)
  <p>expired              hash instance id -> epoch ms until which it counts as expired (flagged through the API)
  <p>deleted              hash service id -> epoch ms until which other routers must forget it (a tombstone)
  <p>inactive             hash service id -> JSON record a deleted service left (description, its instances)
  <p>nudge                pub/sub channel: a router's want of slots, slots given back (sent by the lease scripts)
  <p>mesos-frameworks     hash router host:port -> the Mesos framework id it re-subscribes with after a restart
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.exceptions import RedisError

from waiter.redis_client import RedisConnection
from waiter.settings import redact_url
from waiter.state.base import TOMBSTONE_MS, Exchange, RouterStats, StateUnavailable
from waiter.text import failure_reason

log = logging.getLogger(__name__)
_RESUBSCRIBE_SECS = 0.5

T = TypeVar("T")

# Every script here is safe to run twice (the client resends a command whose connection broke, and one that
# reached the server may have run before its answer was lost, waiter.redis_client): _LEAD sets or renews the
# lease to the same holder, _RESIGN deletes only our own lease, _LEASE sets (never adds) this router's share to what
# is free for it, so a second run grants the same number. The pipelines below hold only SET, SADD, HSET, HSETNX,
# HDEL, DEL: the same state however often they run.
_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# lease(key, instance id, want) -> granted, held: sets this router's lease on one instance (KEYS[1] is the blocked
# hash; ARGV: router id, capacity, router key prefix, now (ms), channel, message, ...).
_LEASE_FN = """
local function lease(key, iid, want)
  local leases = redis.call('HGETALL', key)
  local others, held = 0, 0
  for i = 1, #leases, 2 do
    local rid, n = leases[i], tonumber(leases[i + 1])
    if rid == ARGV[1] then
      held = n
    elseif redis.call('EXISTS', ARGV[3] .. rid) == 1 then
      others = others + n
    else
      redis.call('HDEL', key, rid)
    end
  end
  local until_ms = tonumber(redis.call('HGET', KEYS[1], iid) or '0')
  if until_ms > tonumber(ARGV[4]) and want > held then want = held end
  local granted = math.max(0, math.min(want, tonumber(ARGV[2]) - others))
  if granted > 0 then
    redis.call('HSET', key, ARGV[1], granted)
    redis.call('PEXPIRE', key, 86400000)
  else
    redis.call('HDEL', key, ARGV[1])
  end
  return granted, held
end
"""

# KEYS: blocked hash, lease hash. ARGV: ..., instance id, want. The message is published when slots were given
# back, atomically with it, so whoever hears it finds them free.
_LEASE = (
    _LEASE_FN
    + """
local granted, held = lease(KEYS[2], ARGV[7], tonumber(ARGV[8]))
if granted < held and ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return granted
"""
)

# KEYS: blocked hash, one lease hash per instance. ARGV: ..., need, then instance id and want per instance. Never
# gives back; the message is published when fewer than ``need`` slots were gained.
_GROW = (
    _LEASE_FN
    + """
local result, gained = {}, 0
for i = 2, #KEYS do
  local granted, held = lease(KEYS[i], ARGV[2 * i + 4], tonumber(ARGV[2 * i + 5]))
  result[#result + 1] = granted
  gained = gained + granted - held
end
if gained < tonumber(ARGV[7]) and ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return result
"""
)


class RedisState:
    kind = "redis"
    shared = True

    def __init__(self, url: str, namespace: str = "default", timeout: float = 0.5) -> None:
        self.url = url
        self.timeout = timeout
        self.errors = 0
        self.p = f"waiter:{namespace}:"
        self._connection = RedisConnection(url, timeout=timeout, health_check_interval=1)
        # redis-py's async stubs type every reply as bytes | str | Awaitable; decode_responses makes them str.
        self._redis: Any = self._connection.client
        self._lead: Any = self._redis.register_script(_LEAD)
        self._resign = self._redis.register_script(_RESIGN)
        self._lease = self._redis.register_script(_LEASE)
        self._grow = self._redis.register_script(_GROW)

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout * 2):
                result = await fn()
        except (RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            where = redact_url(self.url)
            log.debug("Redis at %s failed to %s: %r", where, what, exc)  # the message below has our words only
            raise StateUnavailable(f"Redis at {where} failed to {what}: {failure_reason(exc)}.") from exc
        self._connection.primary()  # notices a Sentinel failover as soon as a call reached the new primary
        return result

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._connection.aclose()

    def describe(self) -> dict[str, Any]:
        return self._connection.describe()

    # -- routers -------------------------------------------------------------------------------------------------

    async def heartbeat(self, router_id: str, info: dict[str, Any], ttl_ms: int) -> None:
        async def run() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(f"{self.p}router:{router_id}", json.dumps(info), px=ttl_ms)
                pipe.sadd(f"{self.p}routers", router_id)
                await pipe.execute()

        await self._call("record a heartbeat", run)

    async def _live(self, kind: str) -> dict[str, Any]:
        ids = sorted(await self._redis.smembers(f"{self.p}routers"))
        if not ids:
            return {}
        values = await self._redis.mget([f"{self.p}{kind}:{rid}" for rid in ids])
        return {rid: json.loads(v) for rid, v in zip(ids, values, strict=True) if v is not None}

    async def routers(self) -> dict[str, dict[str, Any]]:
        """The live routers; ids whose heartbeat and counts have both expired are forgotten on the way."""

        async def run() -> dict[str, dict[str, Any]]:
            ids = sorted(await self._redis.smembers(f"{self.p}routers"))
            if not ids:
                return {}
            values = await self._redis.mget([f"{self.p}{kind}:{rid}" for kind in ("router", "stats") for rid in ids])
            infos, stats = values[: len(ids)], values[len(ids) :]
            gone = [rid for rid, info, counts in zip(ids, infos, stats, strict=True) if info is None and counts is None]
            if gone:
                await self._redis.srem(f"{self.p}routers", *gone)
            return {rid: json.loads(info) for rid, info in zip(ids, infos, strict=True) if info is not None}

        return await self._call("list routers", run)

    async def all_stats(self) -> dict[str, dict[str, RouterStats]]:
        raw = await self._call("read counts", lambda: self._live("stats"))
        return {rid: {sid: RouterStats.from_json(v) for sid, v in data.items()} for rid, data in raw.items()}

    async def exchange(
        self, router_id: str, info: dict[str, Any], ttl_ms: int, stats: dict[str, RouterStats], stats_ttl_ms: int
    ) -> Exchange:
        """Two round trips (three when ids or expired flags are pruned) instead of eight."""
        body = json.dumps({sid: s.to_json() for sid, s in stats.items()})

        async def run() -> Exchange:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(f"{self.p}router:{router_id}", json.dumps(info), px=ttl_ms)
                pipe.sadd(f"{self.p}routers", router_id)
                pipe.set(f"{self.p}stats:{router_id}", body, px=stats_ttl_ms)
                pipe.smembers(f"{self.p}routers")
                pipe.hgetall(f"{self.p}blocked")
                pipe.hgetall(f"{self.p}expired")
                *_, members, blocked, expired = await pipe.execute()
            ids = sorted(members)
            values = await self._redis.mget([f"{self.p}{kind}:{rid}" for kind in ("router", "stats") for rid in ids])
            infos, counts = values[: len(ids)], values[len(ids) :]
            now = int(time.time() * 1000)
            gone = [rid for rid, i, c in zip(ids, infos, counts, strict=True) if i is None and c is None]
            lapsed = [iid for iid, until in expired.items() if int(until) <= now]
            if gone or lapsed:
                async with self._redis.pipeline(transaction=False) as pipe:
                    if gone:
                        pipe.srem(f"{self.p}routers", *gone)
                    if lapsed:
                        pipe.hdel(f"{self.p}expired", *lapsed)
                    await pipe.execute()
            return Exchange(
                stats={
                    rid: {sid: RouterStats.from_json(v) for sid, v in json.loads(c).items()}
                    for rid, c in zip(ids, counts, strict=True)
                    if c is not None
                },
                routers={rid: json.loads(i) for rid, i in zip(ids, infos, strict=True) if i is not None},
                blocked={iid for iid, until in blocked.items() if int(until) > now},
                expired={iid for iid, until in expired.items() if int(until) > now},
            )

        return await self._call("exchange counts", run)

    # -- the scaling leader ----------------------------------------------------------------------------------------

    async def lead(self, router_id: str, ttl_ms: int) -> bool:
        result = await self._call(
            "renew the leader lease", lambda: self._lead([f"{self.p}leader"], [router_id, ttl_ms])
        )
        return bool(result)

    async def resign(self, router_id: str) -> None:
        await self._call("release the leader lease", lambda: self._resign([f"{self.p}leader"], [router_id]))

    async def withdraw(self, router_id: str) -> None:
        async def run() -> None:
            # Once per router stop: a scan of the lease hashes costs nothing next to a slot counted by nobody.
            leases = [key async for key in self._redis.scan_iter(match=f"{self.p}lease:*", count=1000)]
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(f"{self.p}router:{router_id}", f"{self.p}stats:{router_id}")
                pipe.srem(f"{self.p}routers", router_id)
                for key in leases:
                    pipe.hdel(key, router_id)
                await pipe.execute()
            await self._resign([f"{self.p}leader"], [router_id])

        await self._call("withdraw this router", run)

    async def load_scaling(self, service_id: str) -> dict[str, Any] | None:
        value = await self._call("read scaling state", lambda: self._redis.get(f"{self.p}scaling:{service_id}"))
        return json.loads(value) if value else None

    async def save_scaling(self, service_id: str, data: dict[str, Any]) -> None:
        body = json.dumps(data)
        await self._call("save scaling state", lambda: self._redis.set(f"{self.p}scaling:{service_id}", body))

    # -- services --------------------------------------------------------------------------------------------------

    async def register_service(self, service_id: str, record: dict[str, Any]) -> None:
        body = json.dumps(record, default=str)

        async def run() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hsetnx(f"{self.p}services", service_id, body)
                pipe.hdel(f"{self.p}deleted", service_id)
                pipe.hdel(f"{self.p}inactive", service_id)
                await pipe.execute()

        await self._call("register a service", run)

    async def services(self) -> dict[str, dict[str, Any]]:
        raw = await self._call("list services", lambda: self._redis.hgetall(f"{self.p}services"))
        return {sid: json.loads(v) for sid, v in raw.items()}

    async def forget_service(self, service_id: str, inactive: dict[str, Any]) -> None:
        body = json.dumps(inactive, default=str)

        async def run() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hdel(f"{self.p}services", service_id)
                pipe.delete(f"{self.p}scaling:{service_id}")
                pipe.hset(f"{self.p}deleted", service_id, int(time.time() * 1000) + TOMBSTONE_MS)
                pipe.hset(f"{self.p}inactive", service_id, body)
                await pipe.execute()

        await self._call("forget a service", run)

    async def inactive_service(self, service_id: str) -> dict[str, Any] | None:
        raw = await self._call("read an inactive service", lambda: self._redis.hget(f"{self.p}inactive", service_id))
        return json.loads(raw) if raw else None

    async def deleted_services(self) -> set[str]:
        raw = await self._call("read deleted services", lambda: self._redis.hgetall(f"{self.p}deleted"))
        now = int(time.time() * 1000)
        return {sid for sid, until in raw.items() if int(until) > now}

    # -- slot leases -----------------------------------------------------------------------------------------------

    async def lease(self, router_id: str, instance_id: str, want: int, capacity: int, announce: str = "") -> int:
        keys = [f"{self.p}blocked", f"{self.p}lease:{instance_id}"]
        args = [*self._lease_args(router_id, capacity, announce), instance_id, want]
        return int(await self._call("lease slots", lambda: self._lease(keys, args)))

    async def grow(
        self, router_id: str, wants: Sequence[tuple[str, int]], capacity: int, need: int, announce: str = ""
    ) -> list[int]:
        keys = [f"{self.p}blocked", *(f"{self.p}lease:{iid}" for iid, _ in wants)]
        args = [*self._lease_args(router_id, capacity, announce), need, *(x for pair in wants for x in pair)]
        return [int(n) for n in await self._call("lease slots", lambda: self._grow(keys, args))]

    def _lease_args(self, router_id: str, capacity: int, announce: str) -> list[str | int]:
        return [router_id, capacity, f"{self.p}router:", int(time.time() * 1000), f"{self.p}nudge", announce]

    async def listen(self, heard: Callable[[str], None]) -> None:
        channel = f"{self.p}nudge"
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        heard(str(message.get("data")))
            except (RedisError, OSError, TimeoutError) as exc:
                # Nudges only hurry what the next tick does anyway: a lost one costs a tick, so just resubscribe.
                log.debug("nudge channel %s broke (%s); subscribing again", channel, exc)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()
            await asyncio.sleep(_RESUBSCRIBE_SECS)

    async def leases(self, instance_id: str) -> dict[str, int]:
        async def run() -> dict[str, int]:
            raw: dict[str, str] = await self._redis.hgetall(f"{self.p}lease:{instance_id}")
            if not raw:
                return {}
            ids = sorted(raw)
            alive = await self._redis.mget([f"{self.p}router:{rid}" for rid in ids])
            return {rid: int(raw[rid]) for rid, a in zip(ids, alive, strict=True) if a is not None}

        return await self._call("read leases", run)

    async def block(self, instance_id: str, ttl_ms: int) -> int:
        until = int(time.time() * 1000) + ttl_ms
        await self._call(
            "block an instance",
            lambda: self._redis.hset(f"{self.p}blocked", instance_id, until),
        )
        return sum((await self.leases(instance_id)).values())

    async def unblock(self, instance_id: str) -> None:
        await self._call(
            "unblock an instance",
            lambda: self._redis.hdel(f"{self.p}blocked", instance_id),
        )

    async def set_control(self, kind: str, service_id: str, record: dict[str, Any] | None) -> None:
        key = f"{self.p}control:{kind}"
        if record is None:
            await self._call(f"clear {kind}", lambda: self._redis.hdel(key, service_id))
        else:
            body = json.dumps(record, default=str)
            await self._call(f"set {kind}", lambda: self._redis.hset(key, service_id, body))

    async def controls(self, kind: str) -> dict[str, dict[str, Any]]:
        raw = await self._call(f"read {kind}", lambda: self._redis.hgetall(f"{self.p}control:{kind}"))
        return {sid: json.loads(v) for sid, v in raw.items()}

    async def flag_expired(self, instance_id: str, ttl_ms: int) -> None:
        until = int(time.time() * 1000) + ttl_ms
        await self._call("flag an expired instance", lambda: self._redis.hset(f"{self.p}expired", instance_id, until))

    # -- scheduler identities kept across restarts ------------------------------------------------------------------

    async def framework_id(self, key: str) -> str | None:
        table = f"{self.p}mesos-frameworks"
        value = await self._call("read the Mesos framework id", lambda: self._redis.hget(table, key))
        return str(value) if value else None

    async def keep_framework_id(self, key: str, framework_id: str | None) -> None:
        table = f"{self.p}mesos-frameworks"
        if framework_id is None:
            await self._call("forget the Mesos framework id", lambda: self._redis.hdel(table, key))
        else:
            await self._call("keep the Mesos framework id", lambda: self._redis.hset(table, key, framework_id))
