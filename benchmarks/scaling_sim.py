"""Our autoscaling against Waiter's, Knative's KPA and a KEDA-HTTP-style scaler, in simulated time.

A discrete-event simulation with exact event times and a simulated clock (nothing sleeps). Open-loop arrivals
(Poisson, seeded, or replayed from a trace file), requests of ``--service`` seconds (1), ``--concurrency`` slots
per instance (1), one FIFO queue in front of the instances, instances ready ``--startup`` seconds (5) after they
are requested, the autoscaler ticking every second. Four algorithms on the same arrivals:

* ``waiter``: Waiter's formula (docs/api.md §5.2) with its defaults, through the real ``waiter.scaling.decide``;
  scale-down kills one idle instance per cycle (§5.3).
* ``ours``: the same decision with burst mode and throughput sizing (``waiter.scaling``), fed what the router's
  autoscaler measures: arrival rate, mean service time of recent requests, queued and outstanding counts.
* ``kpa``: Knative's KPA with its defaults: concurrency observed every second (in flight + queued at the
  activator), averaged over a 60 s stable and a 6 s panic window, target 70% of the container concurrency, panic
  when the panic window wants 2x the ready pods (and no scale-down while panicking, until 60 s without panic),
  scale-down at most halving per tick, scale to zero after a 30 s grace period.
* ``keda``: the KEDA HTTP add-on on a Horizontal Pod Autoscaler: pending requests (queued + in flight) averaged
  over the 15 s polling interval, target = concurrency-level pending requests per replica, HPA's 10% tolerance,
  scale-up at most max(2x, +4) per period, and a 300 s scale-down stabilisation window; min 1 replica.

Peers remove the surplus at once (Kubernetes deletes pods in parallel); every algorithm only removes idle
instances, starting ones first, then the youngest. Shapes, 12 simulated minutes each (``--trace FILE`` adds
one): steady (20 req/s), step (0 -> 50 req/s at 60 s -> 0 at 660 s), spikes (5 req/s, 60 req/s for 30 s every
180 s), diurnal (a cosine ramp 5 -> 60 -> 5 req/s). A trace file holds one arrival time in seconds per line
(``#`` comments allowed); an optional second column is that request's service time.

    .venv/bin/python benchmarks/scaling_sim.py [--out benchmarks/out] [--no-plots] [--trace FILE]

It prints one line per shape and algorithm, then per shape our ratios to the best peer (the peer with the lowest
p99 wait; fewer instance-seconds breaks a tie) and, on step and spikes, whether the target is met: p99 wait at
most 0.5x the best peer's at no more than 1.2x its instance-seconds. PNG plots go to
``<out>/scaling_<shape>.png``. The exit status is 1 when a target is missed. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import random
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from waiter.scaling import BurstSettings, Counts, ScalingSettings, ScalingState, decide  # noqa: E402
from waiter.throughput import Sample, ThroughputMeter  # noqa: E402

SERVICE_SECS = 1.0
STARTUP_SECS = 5.0
TICK_SECS = 1.0
DURATION_SECS = 720.0
SEED = 20240601
# The router's autoscaler also decides when a request queues with no free slot, at most this often.
WAKE_SECS = 0.1

# Waiter's defaults (docs/api.md §2.1); ours is the same plus burst mode.
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


# -- shapes ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    name: str
    arrivals: tuple[float, ...]  # request arrival times
    service: tuple[float, ...] = ()  # per-request service times (empty: all SERVICE_SECS)
    target: bool = False  # the target applies (step, spikes)
    duration: float = DURATION_SECS


def poisson(rate: Callable[[float], float], peak: float, duration: float, rng: random.Random) -> tuple[float, ...]:
    """Arrivals of a Poisson process with a time-varying rate (thinning of a ``peak``-rate process)."""
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            return tuple(times)
        if rng.random() * peak < rate(t):
            times.append(t)


def _step(t: float) -> float:
    return 50.0 if 60.0 <= t < 660.0 else 0.0


def _spikes(t: float) -> float:
    return 60.0 if t >= 60.0 and (t - 60.0) % 180.0 < 30.0 else 5.0


def _diurnal(t: float) -> float:
    return 5.0 + 55.0 * (1 - math.cos(2 * math.pi * t / DURATION_SECS)) / 2


def builtin_shapes(seed: int) -> list[Shape]:
    rng = random.Random(seed)
    return [
        Shape("steady", poisson(lambda _t: 20.0, 20.0, DURATION_SECS, rng)),
        Shape("step", poisson(_step, 50.0, DURATION_SECS, rng), target=True),
        Shape("spikes", poisson(_spikes, 60.0, DURATION_SECS, rng), target=True),
        Shape("diurnal", poisson(_diurnal, 60.0, DURATION_SECS, rng)),
    ]


def read_trace(path: Path) -> Shape:
    """A trace file: one arrival time (seconds) per line, optionally followed by that request's service time."""
    arrivals: list[float] = []
    service: list[float] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        try:
            values = [float(f) for f in fields[:2]]
        except ValueError:
            raise SystemExit(f"{path}:{number}: expected an arrival time in seconds, got {line.strip()!r}") from None
        if values[0] < 0 or (len(values) > 1 and values[1] <= 0):
            raise SystemExit(f"{path}:{number}: times must be >= 0 and service times > 0, got {line.strip()!r}")
        arrivals.append(values[0])
        if len(values) > 1:
            service.append(values[1])
    if not arrivals:
        raise SystemExit(f"{path}: no arrival times in the trace file.")
    if service and len(service) != len(arrivals):
        raise SystemExit(f"{path}: give a service time on every line or on none.")
    order = sorted(range(len(arrivals)), key=arrivals.__getitem__)
    start = arrivals[order[0]]
    times = tuple(arrivals[i] - start for i in order)
    return Shape(f"trace-{path.stem}", times, tuple(service[i] for i in order) if service else (),
                 duration=times[-1] + 60.0)


# -- what every algorithm sees each tick ----------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    now: float
    total: int  # instances requested (starting + ready)
    ready: int
    in_flight: int
    queued: int
    received: int  # requests so far
    finished: int  # requests served so far
    served_secs: float  # service time of the requests served so far

    @property
    def outstanding(self) -> int:
        return self.in_flight + self.queued


class Algorithm(Protocol):
    name: str
    kill_all_surplus: bool  # peers delete every surplus pod at once; Waiter kills one instance per cycle
    wakes_on_demand: bool  # decides at once (at most every WAKE_SECS) when a request queues with no free slot

    def desired(self, obs: Observation) -> int: ...


class WaiterAlgorithm:
    """Waiter's or our decision (``waiter.scaling.decide``), fed as the router's autoscaler feeds it."""

    kill_all_surplus = False

    def __init__(self, name: str, settings: ScalingSettings, *, wakes_on_demand: bool = False) -> None:
        self.name = name
        self.wakes_on_demand = wakes_on_demand
        self.settings = settings
        self.state: ScalingState | None = None
        self.meter = ThroughputMeter()  # what the router's autoscaler measures (waiter.throughput)

    def desired(self, obs: Observation) -> int:
        throughput = self.meter.add(Sample(obs.now, obs.received, obs.finished, obs.served_secs))
        counts = Counts(
            outstanding=obs.outstanding,
            total=obs.total,
            scheduled=obs.total,
            healthy=obs.ready,
            queued=obs.queued,
            arrival_rate=throughput.arrival_rate,
            service_secs=throughput.service_secs,
        )
        decision = decide(self.settings, counts, self.state, obs.now)
        self.state = decision.state
        return decision.scale_to


class Kpa:
    """Knative's KPA (pkg/autoscaler/scaling/autoscaler.go) with its defaults."""

    name = "kpa"
    kill_all_surplus = True
    wakes_on_demand = False

    def __init__(self, concurrency: int, *, min_scale: int = 0, stable: float = 60.0, panic: float = 6.0,
                 utilization: float = 0.7, panic_threshold: float = 2.0, max_down_rate: float = 2.0,
                 zero_grace: float = 30.0) -> None:
        self.target = concurrency * utilization
        self.min_scale = min_scale
        self.stable, self.panic = stable, panic
        self.panic_threshold = panic_threshold
        self.max_down_rate = max_down_rate
        self.zero_grace = zero_grace
        self.samples: deque[tuple[float, float]] = deque()
        self.panic_since: float | None = None
        self.max_panic_pods = 0
        self.zero_since: float | None = None

    def _average(self, now: float, window: float) -> float:
        values = [v for t, v in self.samples if t > now - window]
        return sum(values) / len(values) if values else 0.0

    def desired(self, obs: Observation) -> int:
        now = obs.now
        self.samples.append((now, float(obs.outstanding)))
        while self.samples[0][0] <= now - self.stable:
            self.samples.popleft()
        stable_pods = math.ceil(self._average(now, self.stable) / self.target)
        panic_pods = math.ceil(self._average(now, self.panic) / self.target)
        ready = max(obs.ready, 1)
        if panic_pods / ready >= self.panic_threshold:
            if self.panic_since is None:
                self.max_panic_pods = obs.total
            self.panic_since = now
        elif self.panic_since is not None and now - self.panic_since >= self.stable:
            self.panic_since = None
            self.max_panic_pods = 0
        if self.panic_since is not None:
            want = max(panic_pods, self.max_panic_pods)  # never scale down while panicking
            self.max_panic_pods = want
        else:
            want = stable_pods
        want = max(want, math.ceil(obs.total / self.max_down_rate))
        if want == 0 and obs.total > 0:
            # Scale to zero only after the grace period with nothing to do.
            self.zero_since = now if self.zero_since is None else self.zero_since
            if now - self.zero_since < self.zero_grace:
                want = obs.total
        else:
            self.zero_since = None
        return max(want, self.min_scale)


class KedaHttp:
    """The KEDA HTTP add-on's pending-request metric on a Kubernetes HPA (v2 behaviour defaults)."""

    name = "keda"
    kill_all_surplus = True
    wakes_on_demand = False

    def __init__(self, concurrency: int, *, interval: float = 15.0, min_replicas: int = 1, tolerance: float = 0.1,
                 down_window: float = 300.0) -> None:
        self.target = float(concurrency)
        self.interval = interval
        self.min_replicas = min_replicas
        self.tolerance = tolerance
        self.down_window = down_window
        self.samples: list[float] = []
        self.next_poll = interval  # the first poll averages a whole interval
        self.recommendations: deque[tuple[float, int]] = deque()
        self.replicas: int | None = None

    def desired(self, obs: Observation) -> int:
        self.samples.append(float(obs.outstanding))
        if self.replicas is None:
            self.replicas = max(obs.total, self.min_replicas)
        if obs.now < self.next_poll:
            return self.replicas
        self.next_poll = obs.now + self.interval
        metric = sum(self.samples) / len(self.samples)
        self.samples.clear()
        current = max(obs.total, 1)
        want = self.replicas
        if abs(metric / (self.target * current) - 1) > self.tolerance:
            want = math.ceil(metric / self.target)
        want = min(want, max(2 * current, current + 4))  # HPA's default scale-up policy per period
        self.recommendations.append((obs.now, want))
        while self.recommendations[0][0] <= obs.now - self.down_window:
            self.recommendations.popleft()
        if want < obs.total:
            want = max(r for _, r in self.recommendations)  # scale-down stabilisation: the highest recent one
        self.replicas = max(want, self.min_replicas)
        return self.replicas


def algorithms(concurrency: int) -> list[Algorithm]:
    waiter = dataclasses.replace(WAITER, concurrency_level=concurrency)
    ours = dataclasses.replace(waiter, burst=BurstSettings())
    return [WaiterAlgorithm("waiter", waiter), WaiterAlgorithm("ours", ours, wakes_on_demand=True), Kpa(concurrency),
            KedaHttp(concurrency)]


PEERS = ("waiter", "kpa", "keda")


# -- the simulation -------------------------------------------------------------------------------------------


@dataclass
class Instance:
    started: float
    ready_at: float
    busy: int = 0


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
        return percentile(self.waits, 0.99)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # nearest rank


# Event kinds in the order they run when they share a time: a finished request frees its slot before an arrival
# takes one, and the autoscaler looks last.
_DONE, _READY, _ARRIVE, _TICK = range(4)


class Simulation:
    """One shape through one algorithm. Idle slots are handed out oldest instance first."""

    def __init__(self, shape: Shape, algorithm: Algorithm, *, concurrency: int = 1, startup: float = STARTUP_SECS,
                 initial: int = 1) -> None:
        self.shape = shape
        self.algorithm = algorithm
        self.concurrency = concurrency
        self.startup = startup
        self.initial = initial
        self.now = 0.0
        # (time, kind, sequence, instance id or arrival index, service time of a finished request)
        self.events: list[tuple[float, int, int, int, float]] = []
        self.sequence = 0
        self.instances: dict[int, Instance] = {}
        self.next_id = 0
        self.free: list[int] = []  # heap of instance ids with a free slot (one entry per free slot)
        self.queue: deque[tuple[float, float]] = deque()  # (arrival time, service time) of the waiting requests
        self.in_flight = 0
        self.received = 0
        self.served_secs = 0.0
        self.last_decision = -math.inf
        self.last_kill = -math.inf
        self.result = Result()

    def run(self) -> Result:
        for _ in range(self.initial):
            self._start_instance(ready_at=0.0)
        for index, time in enumerate(self.shape.arrivals):
            self._push(time, _ARRIVE, index)
        for tick in range(int(self.shape.duration / TICK_SECS)):
            self._push(tick * TICK_SECS, _TICK)
        while self.events and self.events[0][0] < self.shape.duration:
            self.now, kind, _, ref, service = heapq.heappop(self.events)
            if kind == _DONE:
                self._done(ref, service)
            elif kind == _READY:
                self._ready(ref)
            elif kind == _ARRIVE:
                self._arrive(ref)
            else:
                self._tick()
        self.now = self.shape.duration
        for instance in self.instances.values():
            self.result.instance_seconds += self.now - instance.started
        # Requests still waiting at the end count with the wait they have had so far.
        self.result.waits.extend(self.now - arrived for arrived, _ in self.queue)
        return self.result

    def _push(self, time: float, kind: int, ref: int = -1, service: float = 0.0) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (time, kind, self.sequence, ref, service))

    def _start_instance(self, ready_at: float) -> None:
        self.instances[self.next_id] = Instance(started=self.now, ready_at=ready_at)
        self._push(ready_at, _READY, self.next_id)
        self.next_id += 1

    def _ready(self, iid: int) -> None:
        if iid in self.instances:
            for _ in range(self.concurrency):
                heapq.heappush(self.free, iid)
            self._dispatch()

    def _service_time(self, index: int) -> float:
        return self.shape.service[index] if self.shape.service else SERVICE_SECS

    def _arrive(self, index: int) -> None:
        self.received += 1
        self.queue.append((self.now, self._service_time(index)))
        self._dispatch()
        if self.queue and self.algorithm.wakes_on_demand and self.now - self.last_decision >= WAKE_SECS:
            self._decide(self._observe())

    def _dispatch(self) -> None:
        while self.queue and self.free:
            iid = heapq.heappop(self.free)
            instance = self.instances.get(iid)
            if instance is None:
                continue  # killed while its slot was free
            instance.busy += 1
            self.in_flight += 1
            arrived, service = self.queue.popleft()
            self.result.waits.append(self.now - arrived)
            self._push(self.now + service, _DONE, iid, service)

    def _done(self, iid: int, service: float) -> None:
        self.in_flight -= 1
        self.served_secs += service
        self.result.served += 1
        instance = self.instances.get(iid)
        if instance is not None:
            instance.busy -= 1
            heapq.heappush(self.free, iid)
        self._dispatch()

    def _observe(self) -> Observation:
        return Observation(
            now=self.now,
            total=len(self.instances),
            ready=sum(1 for i in self.instances.values() if i.ready_at <= self.now),
            in_flight=self.in_flight,
            queued=len(self.queue),
            received=self.received,
            finished=self.result.served,
            served_secs=self.served_secs,
        )

    def _tick(self) -> None:
        obs = self._observe()
        self.result.series.append((self.now, obs.total, obs.outstanding, obs.queued))
        self._decide(obs)

    def _decide(self, obs: Observation) -> None:
        self.last_decision = self.now
        want = self.algorithm.desired(obs)
        for _ in range(want - obs.total):
            self._start_instance(ready_at=self.now + self.startup)
        surplus = obs.total - want
        if not self.algorithm.kill_all_surplus:
            # Waiter's and our autoscaler kill one idle instance at most once a second (docs/api.md §5.3).
            surplus = min(surplus, 1) if self.now - self.last_kill >= TICK_SECS else 0
        for _ in range(surplus):
            if not self._kill_one():
                break
            self.last_kill = self.now

    def _kill_one(self) -> bool:
        """An idle instance: a starting one first, else the youngest ready one; none idle, no kill."""
        idle = [(i.ready_at <= self.now, -iid) for iid, i in self.instances.items() if i.busy == 0]
        if not idle:
            return False
        _, negative_id = min(idle)
        instance = self.instances.pop(-negative_id)
        self.result.instance_seconds += self.now - instance.started
        return True


def equilibrium(shape: Shape, concurrency: int = 1) -> int:
    """Instances the first 10 s of load keep busy: every shape starts in equilibrium (at least one instance)."""
    early = sum(1 for t in shape.arrivals if t < 10.0) / 10.0
    service = sum(shape.service) / len(shape.service) if shape.service else SERVICE_SECS
    return max(1, math.ceil(early * service / concurrency))


def simulate(shape: Shape, algorithm: Algorithm, *, concurrency: int = 1, startup: float = STARTUP_SECS) -> Result:
    initial = equilibrium(shape, concurrency)
    return Simulation(shape, algorithm, concurrency=concurrency, startup=startup, initial=initial).run()


# -- report ---------------------------------------------------------------------------------------------------


def _ratio(ours: float, other: float) -> float:
    if other == 0:
        return 1.0 if ours == 0 else math.inf
    return ours / other


def best_peer(results: dict[str, Result]) -> str:
    return min(PEERS, key=lambda name: (results[name].p99_wait, results[name].instance_seconds))


def verdict(shape: Shape, results: dict[str, Result]) -> tuple[str, bool]:
    peer = best_peer(results)
    ours, best = results["ours"], results[peer]
    cost = _ratio(ours.instance_seconds, best.instance_seconds)
    p99 = _ratio(ours.p99_wait, best.p99_wait)
    mean = _ratio(ours.mean_wait, best.mean_wait)
    line = (f"scaling_sim shape={shape.name} best_peer={peer} ours/best_peer instance_s=x{cost:.3f} "
            f"mean_wait=x{mean:.3f} p99_wait=x{p99:.3f}")
    if not shape.target:
        return line, True
    met = ours.p99_wait <= 0.5 * best.p99_wait + 1e-9 and cost <= 1.2
    return f"{line} target(p99_wait<=x0.5,instance_s<=x1.2) {'met' if met else 'MISSED'}", met


COLOURS = {"waiter": "tab:blue", "ours": "tab:orange", "kpa": "tab:green", "keda": "tab:purple"}


def plot(shape: Shape, results: dict[str, Result], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=(3, 2))
    for name, result in results.items():
        times = [s[0] for s in result.series]
        colour = COLOURS.get(name, "black")
        top.step(times, [s[1] for s in result.series], where="post", color=colour, label=f"{name}: instances")
        bottom.step(times, [s[3] for s in result.series], where="post", color=colour, label=f"{name}: queued")
    top.set_ylabel("instances requested")
    top.set_title(f"{shape.name}: instances and queue per algorithm")
    top.legend(loc="upper right")
    bottom.set_ylabel("queued requests")
    bottom.set_yscale("symlog")
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
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out", help="where the PNGs go")
    parser.add_argument("--no-plots", action="store_true", help="print only (no matplotlib needed)")
    parser.add_argument("--trace", type=Path, action="append", default=[], help="a request-arrival trace file")
    parser.add_argument("--only-trace", action="store_true", help="run the trace files only")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the Poisson arrivals")
    args = parser.parse_args(argv)
    shapes = ([] if args.only_trace else builtin_shapes(args.seed)) + [read_trace(p) for p in args.trace]
    print(f"# {SERVICE_SECS:g} s requests, concurrency-level 1, {STARTUP_SECS:g} s start-up, ticks of "
          f"{TICK_SECS:g} s; ours = waiter's defaults + burst mode (waiter.scaling)")
    verdicts: list[tuple[str, bool]] = []
    for shape in shapes:
        results = {a.name: simulate(shape, a) for a in algorithms(1)}
        for name, r in results.items():
            print(f"scaling_sim shape={shape.name} algorithm={name} instance_s={r.instance_seconds:.0f} "
                  f"mean_wait_s={r.mean_wait:.3f} p99_wait_s={r.p99_wait:.3f} served={r.served}")
        verdicts.append(verdict(shape, results))
        print(verdicts[-1][0])
        if not args.no_plots:
            plot(shape, results, args.out)
    if not args.no_plots:
        print(f"# plots: {args.out}/scaling_<shape>.png")
    return 0 if all(met for _, met in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
