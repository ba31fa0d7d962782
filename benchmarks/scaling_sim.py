"""Waiter's autoscaling against ours (Waiter's plus burst mode), replayed through the real ``waiter.scaling.decide``.

A discrete-event simulation with exact event times and a simulated clock (nothing sleeps): closed-loop clients
(each sends its next request the moment the previous one returns), requests of 1 s, concurrency-level 1, a FIFO
queue in front of the instances, instances healthy 5 s after they are requested, the autoscaler ticking every
second, and scale-down as in docs/api.md §5.3 (one idle instance per cycle at most once a second, starting
instances first, then the youngest). Three traffic shapes, 12 simulated minutes each:

    .venv/bin/python benchmarks/scaling_sim.py [--out benchmarks/out] [--no-plots] [--threshold 2 --window 60]

It prints one line per shape and algorithm, then the ratios ours/waiter and whether the targets of issue 4 are
met, and draws benchmarks/out/scaling_<shape>.png. The exit status is 1 when a target is missed.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from waiter.scaling import BurstSettings, Counts, ScalingSettings, ScalingState, decide  # noqa: E402

REQUEST_SECS = 1.0
STARTUP_SECS = 5.0
TICK_SECS = 1.0
KILL_INTERVAL_SECS = 1.0
DURATION_SECS = 720.0

# Waiter's defaults (docs/api.md §2.1): the same smoothing for both; only burst mode differs.
WAITER = ScalingSettings(
    min_instances=1,
    max_instances=500,
    concurrency_level=1,
    scale_factor=1.0,
    scale_up_factor=0.1,
    scale_down_factor=0.001,
    jitter_threshold=0.5,
    expired_instance_restart_rate=0.1,
    burst=BurstSettings(enabled=False),
)

# Event kinds in the order they run when they share a time: a request that ends frees its slot and its client
# sends the next one before the autoscaler looks at the outstanding count.
_DONE, _READY, _CLIENTS, _SEND, _TICK = range(5)


@dataclass(frozen=True)
class Shape:
    name: str
    changes: tuple[tuple[float, int], ...]  # (time, number of closed-loop clients from then on)
    target: str  # "cut" (p99 wait halved for <= 20% more instance-seconds) or "no-worse"


def _spikes(base: int, peak: int, first: float, every: float, length: float) -> tuple[tuple[float, int], ...]:
    changes: list[tuple[float, int]] = [(0.0, base)]
    start = first
    while start < DURATION_SECS:
        changes += [(start, peak), (start + length, base)]
        start += every
    return tuple(changes)


SHAPES = (
    Shape("steady", ((0.0, 20),), "no-worse"),
    Shape("step", ((0.0, 0), (60.0, 50), (660.0, 0)), "cut"),
    Shape("spikes", _spikes(base=5, peak=60, first=60.0, every=180.0, length=30.0), "cut"),
)


@dataclass
class Instance:
    started: float
    ready_at: float
    busy: bool = False


@dataclass
class Result:
    instance_seconds: float = 0.0
    waits: list[float] = field(default_factory=list)
    served: int = 0
    # one sample per tick: (time, instances requested, outstanding, queued)
    series: list[tuple[float, int, int, int]] = field(default_factory=list)

    @property
    def mean_wait(self) -> float:
        return sum(self.waits) / len(self.waits) if self.waits else 0.0

    @property
    def p99_wait(self) -> float:
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]  # nearest rank


class Simulation:
    """One shape through one algorithm. Instances are kept in start order: the first idle one is the oldest."""

    def __init__(self, shape: Shape, settings: ScalingSettings) -> None:
        self.shape = shape
        self.settings = settings
        self.now = 0.0
        self.events: list[tuple[float, int, int, int]] = []  # (time, kind, sequence, instance id)
        self.sequence = 0
        self.instances: dict[int, Instance] = {}
        self.next_id = 0
        self.queue: deque[float] = deque()  # times the waiting requests were sent
        self.clients = 0  # clients with a request outstanding
        self.joining = 0  # clients that have arrived but not sent their first request yet
        self.retiring = 0  # of those, clients that leave when their request returns
        self.state: ScalingState | None = None
        self.last_kill = -math.inf
        self.result = Result()

    def run(self) -> Result:
        # Each shape starts in equilibrium with its load at t=0 (the step shape's is zero: min-instances).
        for _ in range(max(self.settings.min_instances, self.shape.changes[0][1])):
            self._start_instance(ready_at=0.0)
        for time, _clients in self.shape.changes:
            self._push(time, _CLIENTS)
        for tick in range(int(DURATION_SECS / TICK_SECS)):
            self._push(tick * TICK_SECS, _TICK)
        handlers: dict[int, Callable[[int], None]] = {
            _DONE: self._done,
            _READY: lambda _: self._dispatch(),
            _CLIENTS: lambda _: self._set_clients(),
            _SEND: lambda _: self._send_first(),
            _TICK: lambda _: self._tick(),
        }
        while self.events and self.events[0][0] < DURATION_SECS:
            self.now, kind, _, instance_id = heapq.heappop(self.events)
            handlers[kind](instance_id)
        self.now = DURATION_SECS
        for instance in self.instances.values():
            self.result.instance_seconds += self.now - instance.started
        # Requests still waiting at the end count with the wait they have had so far.
        self.result.waits.extend(self.now - sent for sent in self.queue)
        return self.result

    def _push(self, time: float, kind: int, instance_id: int = -1) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (time, kind, self.sequence, instance_id))

    def _start_instance(self, ready_at: float) -> None:
        self.instances[self.next_id] = Instance(started=self.now, ready_at=ready_at)
        self._push(ready_at, _READY, self.next_id)
        self.next_id += 1

    def _clients_at(self, time: float) -> int:
        return [n for t, n in self.shape.changes if t <= time][-1]

    def _set_clients(self) -> None:
        more = self._clients_at(self.now) - (self.clients + self.joining - self.retiring)
        if more < 0:
            self.retiring -= more
            return
        kept = min(self.retiring, more)
        self.retiring -= kept
        # New clients send their first request spread evenly over one second: arriving in the same instant
        # they would stay in lockstep for the whole run (1 s requests), and every wait would be whole seconds.
        joining = more - kept
        self.joining += joining
        for index in range(joining):
            self._push(self.now + index / joining, _SEND)

    def _send_first(self) -> None:
        self.joining -= 1
        self.clients += 1
        self.queue.append(self.now)
        self._dispatch()

    def _dispatch(self) -> None:
        if not self.queue:
            return
        for instance_id, instance in self.instances.items():
            if not self.queue:
                return
            if not instance.busy and instance.ready_at <= self.now:
                instance.busy = True
                self.result.waits.append(self.now - self.queue.popleft())
                self._push(self.now + REQUEST_SECS, _DONE, instance_id)

    def _done(self, instance_id: int) -> None:
        self.instances[instance_id].busy = False
        self.result.served += 1
        if self.retiring:
            self.retiring -= 1
            self.clients -= 1
        else:
            self.queue.append(self.now)
        self._dispatch()

    def _tick(self) -> None:
        healthy = sum(1 for i in self.instances.values() if i.ready_at <= self.now)
        total = len(self.instances)
        counts = Counts(outstanding=self.clients, total=total, scheduled=total, healthy=healthy)
        decision = decide(self.settings, counts, self.state, self.now)
        self.state = decision.state
        self.result.series.append((self.now, total, self.clients, len(self.queue)))
        for _ in range(max(0, decision.amount)):
            self._start_instance(ready_at=self.now + STARTUP_SECS)
        if decision.amount < 0 and total > decision.scale_to and self.now - self.last_kill >= KILL_INTERVAL_SECS:
            self._kill_one()

    def _kill_one(self) -> None:
        """An idle instance: a starting one first, else the youngest healthy one (§5.3); none idle, no kill."""
        idle = [(i.ready_at <= self.now, -iid) for iid, i in self.instances.items() if not i.busy]
        if not idle:
            return
        _, negative_id = min(idle)
        instance = self.instances.pop(-negative_id)
        self.result.instance_seconds += self.now - instance.started
        self.last_kill = self.now


def _ratio(ours: float, waiter: float) -> float:
    if waiter == 0:
        return 1.0 if ours == 0 else math.inf
    return ours / waiter


def _verdict(shape: Shape, ours: Result, waiter: Result) -> tuple[str, bool]:
    cost = _ratio(ours.instance_seconds, waiter.instance_seconds)
    p99 = _ratio(ours.p99_wait, waiter.p99_wait)
    mean = _ratio(ours.mean_wait, waiter.mean_wait)
    head = (f"scaling_sim shape={shape.name} ours/waiter instance_s=x{cost:.3f} mean_wait=x{mean:.3f} "
            f"p99_wait=x{p99:.3f}")
    if shape.target == "cut":
        met = ours.p99_wait <= 0.5 * waiter.p99_wait and cost <= 1.2
        return f"{head} target(p99_wait<=x0.5,instance_s<=x1.2) {'met' if met else 'MISSED'}", met
    met = ours.p99_wait <= waiter.p99_wait and ours.instance_seconds <= waiter.instance_seconds * (1 + 1e-9)
    return f"{head} target(no_worse_on_both) {'met' if met else 'MISSED'}", met


def _plot(shape: Shape, results: dict[str, Result], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=(3, 2))
    colours = {"waiter": "tab:blue", "ours": "tab:orange"}
    for name, result in results.items():
        times = [s[0] for s in result.series]
        top.step(times, [s[1] for s in result.series], where="post", color=colours[name], label=f"{name}: instances")
        bottom.step(times, [s[3] for s in result.series], where="post", color=colours[name], label=f"{name}: queued")
    outstanding = results["waiter"].series
    top.step([s[0] for s in outstanding], [s[2] for s in outstanding], where="post", color="grey", linestyle="--",
             label="outstanding (both)")
    top.set_ylabel("count")
    top.set_title(f"{shape.name}: instances requested and outstanding requests (1 s requests, 5 s start-up)")
    top.legend(loc="center right")
    bottom.set_ylabel("queued requests")
    bottom.set_xlabel("simulated time (s)")
    bottom.legend(loc="upper right")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scaling_{shape.name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out", help="where the PNGs go")
    parser.add_argument("--no-plots", action="store_true", help="print only (no matplotlib needed)")
    defaults = BurstSettings()
    parser.add_argument("--threshold", type=float, default=defaults.threshold, help="ours: burst threshold")
    parser.add_argument("--window", type=float, default=defaults.stable_window_secs, help="ours: stable window (s)")
    args = parser.parse_args(argv)
    ours = dataclasses.replace(WAITER, burst=BurstSettings(threshold=args.threshold, stable_window_secs=args.window))
    algorithms = {"waiter": WAITER, "ours": ours}
    print(f"# ours = waiter's defaults + burst threshold {args.threshold:g}, stable window {args.window:g} s; "
          f"{DURATION_SECS:.0f} simulated s per shape")
    verdicts: list[tuple[str, bool]] = []
    for shape in SHAPES:
        results = {name: Simulation(shape, settings).run() for name, settings in algorithms.items()}
        for name, r in results.items():
            print(f"scaling_sim shape={shape.name} algorithm={name} instance_s={r.instance_seconds:.0f} "
                  f"mean_wait_s={r.mean_wait:.3f} p99_wait_s={r.p99_wait:.3f} served={r.served}")
        verdicts.append(_verdict(shape, results["ours"], results["waiter"]))
        if not args.no_plots:
            _plot(shape, results, args.out)
    for line, _ in verdicts:
        print(line)
    if not args.no_plots:
        print(f"# plots: {args.out}/scaling_<shape>.png")
    return 0 if all(met for _, met in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
