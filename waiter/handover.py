"""This router's slot leases on shared instances, and slots handed between routers the moment one waits.

An instance's slots are leased through the shared state (a script keeps the live routers' leases within its
concurrency-level), and a router uses only the slots it holds. A slot moves between routers in three exchanges
with Redis:

1. a request queues here without a slot: this router tries to lease free slots, and the same script sends
   ``want`` (service, how many wait, when the oldest queued) to every router when they did not do;
2. a router that holds a slot of that service gives it back if it is idle, or, if its own oldest waiter is younger
   than the peer's, as soon as the request on it ends (it stops using the slot at once); the lease script sends
   ``gave`` (instance, to whom) atomically with the release, so whoever hears it finds the slot free;
3. the router named in ``gave`` leases the slot and serves its oldest waiter.

Three scripts, each one round trip, never a tick. The oldest waiter
anywhere wins a contended slot, so a router whose own queue refills (closed-loop clients) can no longer keep a
slot for ever while another router's requests wait (issue 15's stall). Wants lapse after ``want_ttl`` unless sent
again; a router still waiting sends its want again at every tick, so a lost message costs one tick.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from waiter.aio import raise_if_cancelling
from waiter.registry import ServiceRegistry
from waiter.reservation import Reservations
from waiter.state.base import SharedState, StateUnavailable

log = logging.getLogger(__name__)

WANT, GAVE = "want", "gave"
GROW_RETRY_SECS = 1.0  # how often a router with nothing waiting tries for slots it found all taken


@dataclass(frozen=True, slots=True)
class Want:
    """A peer router waits for slots of a service."""

    router: str
    need: int  # requests queued there without a slot
    oldest: float  # when the oldest of them queued (wall clock)
    until: float  # this router's monotonic time at which the want lapses unless sent again


def plan(res: Reservations, held: Mapping[str, int], wants: Sequence[Want], grow: bool) -> dict[str, int]:
    """The slots this router should use on each instance of a service (pure: reads its reservations).

    ``held``: what it leases now. Nobody else waiting: keep what it holds and, when ``grow``, every free slot it can
    lease (its own bursts then need no round trip); instances it never leased always grow. Peers waiting: idle slots
    go to them, and busy ones too, as their requests end, when a peer's oldest waiter is older than this router's
    (at most as many as the peers wait for); a free slot is anyone's, so growing never defers to a peer (a want
    that was served meanwhile would otherwise hold this router's requests back). An instance out of rotation keeps
    only the slots in use on it."""
    level = res.concurrency_level
    routable = res.routable_ids()
    target = {iid: 0 for iid in held if iid not in routable}
    need = sum(w.need for w in wants)
    mine = res.oldest_wait()
    peers_first = mine is not None and any(w.oldest < mine for w in wants)
    for iid in routable:
        have = held.get(iid, 0)
        # Idle slots go to waiting peers; busy ones too when a peer waited longer.
        give = min(need, have if peers_first else max(0, have - res.in_use(iid)))
        need -= give
        target[iid] = have - give if give or not (grow or iid not in held) else level
    return target


@dataclass(frozen=True, slots=True)
class Message:
    """What routers tell each other on the nudge channel."""

    kind: str  # WANT or GAVE
    sender: str
    service: str
    need: int = 0  # WANT: requests queued without a slot
    oldest: float = 0.0  # WANT: when the oldest of them queued (wall clock)
    to: str = ""  # GAVE: the router the slots were given back for ("" anyone)


def encode(message: Message) -> str:
    last = [message.need, message.oldest] if message.kind == WANT else ["", message.to]
    return json.dumps([message.kind, message.sender, message.service, *last])


def decode(text: str) -> Message | None:
    """The message, or None for anything else (a foreign or malformed one is ignored, never fatal)."""
    try:
        kind, sender, service, a, b = json.loads(text)
        if kind == WANT:
            return Message(WANT, str(sender), str(service), need=int(a), oldest=float(b))
        if kind == GAVE:
            return Message(GAVE, str(sender), str(service), to=str(b))
    except (ValueError, TypeError):
        pass
    return None


class SlotDemand:
    """Services whose slots should be settled now: a request queued without a slot, an instance became healthy,
    a slot promised to a peer was released, a peer wanted or gave slots. Set from the request path: cheap."""

    def __init__(self) -> None:
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def mark(self, service_id: str) -> None:
        self._dirty.add(service_id)
        self._wake.set()

    async def take(self) -> set[str]:
        await self._wake.wait()
        self._wake.clear()
        dirty, self._dirty = self._dirty, set()
        return dirty


class Handover:
    """This router's leases: settles a service's slots when something changed (``SlotDemand``), and every tick
    (``settle_all``)."""

    def __init__(
        self,
        state: SharedState,
        registry: ServiceRegistry,
        router_id: str,
        demand: SlotDemand,
        *,
        want_ttl: float,
        failed: Callable[[StateUnavailable], None],
        gave: Callable[[str, str], None] | None = None,
    ) -> None:
        """``gave(service id, router id)`` hears every slot given back for a router (waiter.handoff)."""
        self.state = state
        self.registry = registry
        self.router_id = router_id
        self.demand = demand
        self.want_ttl = want_ttl
        self._failed = failed
        self._gave = gave
        self.leases: dict[str, dict[str, int]] = {}  # service id -> instance id -> slots leased in the state
        self._wants: dict[str, dict[str, Want]] = {}  # service id -> peer router id -> its want
        self._sent: dict[str, tuple[int, float | None]] = {}  # service id -> (need, oldest) last told
        self._peer_wanted: dict[str, float] = {}  # service id -> when a peer last wanted its slots (monotonic)
        self._fruitless: dict[str, float] = {}  # instance id -> when leasing more of it last gained nothing
        self._lock = asyncio.Lock()

    # -- what wakes it ------------------------------------------------------------------------------------------

    def heard(self, text: str) -> None:
        message = decode(text)
        if message is None:
            return
        if message.kind == GAVE and self._gave is not None:
            self._gave(message.service, message.to)  # this router's own gifts too
        if message.sender == self.router_id:
            return
        sid, sender = message.service, message.sender
        service = self.registry.services.get(sid)
        if service is None:
            return
        if message.kind == WANT:
            wants = self._wants.setdefault(sid, {})
            if message.need > 0:
                wants[sender] = Want(sender, message.need, message.oldest, time.monotonic() + self.want_ttl)
                self._peer_wanted[sid] = time.monotonic()
            else:
                wants.pop(sender, None)
            service.reservations.on_release = self._released_hook(sid) if wants else None
            self.demand.mark(sid)
        elif message.to == self.router_id:
            # Slots were given back for us: lease them. A router that gives is not waiting longer than we are.
            self._wants.get(sid, {}).pop(sender, None)
            if service.reservations.queued:
                self.demand.mark(sid)

    def _released_hook(self, service_id: str) -> Callable[[str], None]:
        mark = self.demand.mark
        return lambda _instance_id: mark(service_id)

    # -- the loop -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            for sid in await self.demand.take():
                try:
                    await self.settle(sid)
                except StateUnavailable as exc:
                    raise_if_cancelling()
                    self._failed(exc)
                except Exception:
                    raise_if_cancelling()
                    log.exception("settling the slots of %s failed", sid)

    async def settle_all(self) -> None:
        """Every tick: take free slots, give back what peers wait for or what left rotation, tell peers again
        what waits here; forget services that are gone."""
        for sid in [s for s in self.leases if s not in self.registry.services]:
            del self.leases[sid]
        for table in (self._wants, self._peer_wanted, self._sent):
            for sid in [s for s in table if s not in self.registry.services]:
                del table[sid]
        now = time.monotonic()
        for iid in [i for i, at in self._fruitless.items() if now - at >= GROW_RETRY_SECS]:
            del self._fruitless[iid]
        for sid in list(self.registry.services):
            await self.settle(sid, grow=True, again=True)

    async def settle(self, sid: str, *, grow: bool = False, again: bool = False) -> None:
        """Give back what peers wait for, lease what this router's waiters need, and tell the peers in the same
        exchange when the free slots did not do."""
        service = self.registry.services.get(sid)
        if service is None:
            return
        res = service.reservations
        async with self._lock:
            wants = self._live_wants(sid, res)
            held = self.leases.setdefault(sid, {})
            # Slots just given to a peer are not taken back by a tick before the peer leased them.
            quiet = time.monotonic() - self._peer_wanted.get(sid, -self.want_ttl) >= self.want_ttl
            target = plan(res, held, wants, (grow and quiet) or bool(res.queued))
            growing = []
            now = time.monotonic()
            for iid, use in target.items():
                have = held.get(iid, 0)
                if max(use, res.in_use(iid)) <= have:
                    await self._give(sid, res, held, iid, use, wants)
                    continue
                res.set_capacity(iid, have)  # what it holds for sure, whatever becomes of the rest
                # Nothing waits here and the slots were taken last time: a peer holds them, and would say (gave)
                # when it gives some back; try again only now and then, not at every tick.
                if res.queued or iid not in held or now - self._fruitless.get(iid, -GROW_RETRY_SECS) >= GROW_RETRY_SECS:
                    growing.append((iid, max(use, res.in_use(iid))))
            announce = self._want(sid, res, again)
            if growing or announce:
                granted = await self.state.grow(self.router_id, growing, res.concurrency_level, res.queued, announce)
                for (iid, _), got in zip(growing, granted, strict=True):
                    if got > held.get(iid, 0):
                        self._fruitless.pop(iid, None)
                    else:
                        self._fruitless[iid] = now
                    self._record(res, held, iid, target[iid], got)

    def _want(self, sid: str, res: Reservations, again: bool) -> str:
        """What to tell peers if the free slots do not serve this router's queue: its waiters when they changed,
        and again at every tick while they wait (a lost want costs a tick). A served want is not withdrawn: the
        giver counted what it gave, and a want served otherwise lapses or goes with the next slot its router
        gives (and a peer that defers to it only gives a slot it then leases again)."""
        need, oldest = res.queued, res.oldest_wait()
        if need == 0:
            self._sent.pop(sid, None)
            return ""
        if self._sent.get(sid) == (need, oldest) and not again:
            return ""
        self._sent[sid] = (need, oldest)
        return encode(Message(WANT, self.router_id, sid, need=need, oldest=oldest or 0.0))

    def _live_wants(self, sid: str, res: Reservations) -> list[Want]:
        wants = self._wants.get(sid)
        if not wants:
            return []
        now = time.monotonic()
        for rid in [r for r, w in wants.items() if w.until <= now]:
            del wants[rid]
        if not wants:
            res.on_release = None
        return sorted(wants.values(), key=lambda w: w.oldest)

    async def _give(
        self, sid: str, res: Reservations, held: dict[str, int], iid: str, use: int, wants: list[Want]
    ) -> None:
        """Use ``use`` slots of an instance and lease no more than that, nor fewer than are in use on it (those are
        given back as their requests end). Slots given back announce themselves to the oldest waiting peer."""
        have = held.get(iid, 0)
        lease = max(use, res.in_use(iid))
        if lease == have:
            res.set_capacity(iid, min(use, have))
            return
        res.set_capacity(iid, use)  # stop using them before they are someone else's
        to = wants[0].router if wants else ""
        announce = encode(Message(GAVE, self.router_id, sid, to=to))
        try:
            granted = await self.state.lease(self.router_id, iid, lease, res.concurrency_level, announce)
        except StateUnavailable:
            # Serve on with what it held: with Redis unreachable nobody can lease the slots meanwhile.
            res.set_capacity(iid, have)
            raise
        if wants:
            self._given(sid, wants[0], have - granted)
        self._record(res, held, iid, use, granted)

    @staticmethod
    def _record(res: Reservations, held: dict[str, int], iid: str, use: int, granted: int) -> None:
        if granted or iid in res.routable_ids():
            held[iid] = granted  # 0 too: an instance leased before is not grown at once as a new one would be
        else:
            held.pop(iid, None)
        res.set_capacity(iid, min(use, granted))

    def _given(self, sid: str, want: Want, count: int) -> None:
        wants = self._wants.get(sid, {})
        if want.need > count:
            wants[want.router] = Want(want.router, want.need - count, want.oldest, want.until)
        else:
            wants.pop(want.router, None)
