"""One timer for ``evaluate`` and ``profile``: configurations timed back to back, unit by unit.

A *unit* is one piece of work every configuration does: one utterance at batch size 1, one
padded batch otherwise. A *round* is one pass over every unit. For each unit, every
configuration (an *arm*) runs once, back to back: in a random order (seeded) on one unit and
in the reverse of that order on the next (ABBA for two arms). The reversal makes a drift of the
machine's speed (another process, a clock change) hit every arm alike; the random order gives
every arm the same neighbours on average. A fixed order was biased: with arms 0..N run forward
then backward, full depth timed against itself read 0.979x [0.970, 0.989] on a quiet machine,
because the calibration arm's neighbour was another model (whose weights evict this model's
from cache) and arm 0's neighbour a shallow exit of the same model. Each arm's visit to
a unit is timed with ``time.perf_counter`` (wall) and ``time.process_time`` (CPU seconds of all
this process's threads), between device synchronisations.

Why not ``torch.utils.benchmark.Timer``: it times one statement in a loop, which cannot
interleave two configurations on the same utterance; its dispersion check is used as is
(:func:`dispersion`: the IQR/median warnings at 10% and 25%).

The pairs ``(arm 0, arm k)`` on the same visit give the speedup of arm k and its interval
(:func:`dyncli.measure.stats.paired_speedup`). With ``rounds=None`` (``--repeats auto``) rounds
continue until every arm's wall-clock interval has a half-width of at most ``precision`` of the
speedup, or ``time_budget`` seconds of timing are spent, and :attr:`TimingRun.stopped` says which.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dyncli.measure.stats import Interval, paired_speedup

IQR_WARN = 0.10  # torch.utils.benchmark: "could indicate system fluctuation"
IQR_GROSS_WARN = 0.25  # torch.utils.benchmark: "suggests significant environmental influence"
MIN_ROUNDS = 2  # both orders of every pair at least once
MAX_ROUNDS = 1000
WARMUP_UNITS = 8
STOP_CHECK_RESAMPLES = 999  # the stopping rule's quick interval; the report's uses 9999


@dataclass
class Arm:
    """One configuration to time. ``run(unit)`` does unit ``unit``'s work and returns the
    seconds its encoder took (measured inside, between synchronisations), or None."""

    name: str
    run: Callable[[int], float | None]


@dataclass
class ArmTimes:
    """Seconds of every visit, in visit order (round by round, unit by unit)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    encoder: list[float] = field(default_factory=list)
    round_wall: list[float] = field(default_factory=list)  # one pass over every unit


@dataclass
class TimingRun:
    arms: list[ArmTimes]
    units: int
    rounds: int
    stopped: str
    seconds: float
    precision: float | None
    time_budget: float | None

    @property
    def pairs(self) -> int:
        return self.units * self.rounds


def speedup(run: TimingRun, arm: int, clock: str = "wall", **kwargs: Any) -> Interval:
    """Arm 0's time over ``arm``'s, paired per visit, with its interval (``clock``: wall,
    cpu or encoder)."""
    base = getattr(run.arms[0], clock)
    other = getattr(run.arms[arm], clock)
    return paired_speedup(base, other, **kwargs)


def import_benchmark() -> Any:
    """``torch.utils.benchmark``, without the CUDA_HOME warning its import logs on CPU hosts."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import benchmark

    return benchmark


def dispersion(times: Sequence[float]) -> tuple[float | None, str | None]:
    """IQR / median of an arm's round times and torch.utils.benchmark's warning for it (None
    below 10%, or with fewer than four rounds, where an IQR means little)."""
    if len(times) < 4:
        return None, None
    benchmark = import_benchmark()
    m = benchmark.utils.common.Measurement(
        number_per_run=1,
        raw_times=list(times),
        task_spec=benchmark.utils.common.TaskSpec(stmt="round", setup=""),
    )
    rel = m.iqr / m.median if m.median > 0 else math.inf
    if not m.meets_confidence(IQR_GROSS_WARN):
        return rel, f"IQR is {rel:.0%} of the median: significant environmental influence"
    if not m.meets_confidence(IQR_WARN):
        return rel, f"IQR is {rel:.0%} of the median: system fluctuation"
    return rel, None


def _widest(run: TimingRun) -> float:
    """The widest wall-clock half-width (relative) among arms 1.. (the stopping rule)."""
    widest = 0.0
    for k in range(1, len(run.arms)):
        interval = speedup(run, k, resamples=STOP_CHECK_RESAMPLES)
        widest = max(widest, interval.half_width)
    return widest


def time_interleaved(
    arms: Sequence[Arm],
    units: int,
    *,
    threads: int,
    rounds: int | None = None,
    precision: float = 0.03,
    time_budget: float = 150.0,
    sync: Callable[[], None] = lambda: None,
    warmup: int = WARMUP_UNITS,
    progress: Callable[[int, float | None], None] | None = None,
    seed: int = 0,
) -> TimingRun:
    """Time every arm on every unit, back to back in alternating order; see the module
    docstring. ``rounds``: that many rounds; None: until ``precision`` or ``time_budget``
    (at least :data:`MIN_ROUNDS`). ``progress(rounds_done, widest_half_width)`` after each
    round."""
    if not arms or units < 1:
        raise ValueError("nothing to time")
    torch.set_num_threads(threads)
    for arm in arms:  # warm-up: the first units through every arm (allocator, caches, packing)
        for unit in range(min(warmup, units)):
            arm.run(unit)
    sync()
    times = [ArmTimes() for _ in arms]
    run = TimingRun(times, units, 0, "", 0.0, None if rounds else precision, None)
    if rounds is None:
        run.time_budget = time_budget
    started = time.perf_counter()
    rng = random.Random(seed)
    order = list(range(len(arms)))
    visit = 0
    while True:
        round_wall = [0.0] * len(arms)
        for unit in range(units):
            if visit % 2 == 0:  # a fresh random order, then its reverse on the next unit
                rng.shuffle(order)
            for k in order if visit % 2 == 0 else order[::-1]:
                sync()
                cpu0 = time.process_time()
                wall0 = time.perf_counter()
                encoder = arms[k].run(unit)
                sync()
                wall = time.perf_counter() - wall0
                cpu = time.process_time() - cpu0
                times[k].wall.append(wall)
                times[k].cpu.append(max(cpu, 1e-9))  # process_time ticks can read 0
                times[k].encoder.append(encoder if encoder is not None else wall)
                round_wall[k] += wall
            visit += 1
        for k, total in enumerate(round_wall):
            times[k].round_wall.append(total)
        run.rounds += 1
        run.seconds = time.perf_counter() - started
        if rounds is not None:
            if progress is not None:
                progress(run.rounds, None)
            if run.rounds >= rounds:
                run.stopped = f"--repeats {rounds}: {rounds} round(s)"
                break
            continue
        widest = _widest(run) if len(arms) > 1 and run.pairs >= 2 else 0.0
        if progress is not None:
            progress(run.rounds, widest)
        if run.rounds < MIN_ROUNDS:
            continue
        if widest <= precision:
            run.stopped = (
                f"precision reached: every speedup interval within +-{100 * precision:g}% "
                f"after {run.rounds} rounds"
            )
            break
        per_round = run.seconds / run.rounds
        if run.seconds + per_round > time_budget or run.rounds >= MAX_ROUNDS:
            run.stopped = (
                f"time budget spent ({time_budget:g} s): the widest speedup interval is "
                f"+-{100 * widest:.1f}% after {run.rounds} rounds, short of "
                f"+-{100 * precision:g}%"
            )
            break
    return run
