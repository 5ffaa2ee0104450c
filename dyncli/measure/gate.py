"""A release gate with three outcomes: every bar is judged on an interval, not on a number.

For each bar the row's figure comes with its 95% interval (:mod:`dyncli.measure.stats`):

* **PASS** when the whole interval clears the bar (the speedup's lower bound is at least
  ``--min-speedup``; the WER increase's upper bound is at most ``--max-wer-increase``);
* **FAIL** when the whole interval misses it;
* **INCONCLUSIVE** when the bar lies inside the interval: this run cannot tell. The result
  says how many more timed pairs (speed) or reference words (accuracy) would decide it,
  assuming the interval narrows as one over the square root of the count.

A row's verdict is its worst bar's (FAIL, then INCONCLUSIVE, then PASS). The gate's operating
point is the row at ``--at``, else the fastest row that passes every bar, else the fastest row
no bar fails (INCONCLUSIVE), else the closest miss (fewest failed bars, then fastest). When the
run's noise floor (``--calibrate``: full depth timed against itself) excludes 1.00, the
environment is unreliable and a PASS becomes INCONCLUSIVE.

Exit codes: :data:`EXIT_CODES` (0 pass, 1 fail, 3 inconclusive; 2 is a usage or input error,
raised elsewhere). ``on_inconclusive`` maps INCONCLUSIVE to 1 (``fail``) or 0 (``pass``) for
pipelines that need two outcomes; the verdict itself stays INCONCLUSIVE in the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dyncli.dynamic.operating_point import canonical_threshold
from dyncli.errors import UsageError
from dyncli.measure.stats import needed

PASS = "PASS"
FAIL = "FAIL"
INCONCLUSIVE = "INCONCLUSIVE"
EXIT_CODES = {PASS: 0, FAIL: 1, INCONCLUSIVE: 3}
ON_INCONCLUSIVE = ("fail", "pass")
_RANK = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2}
_EPS = 1e-9


@dataclass
class ReleaseBars:
    """Release bars. All one-sided: an improvement never fails a bar."""

    max_wer: float | None = None
    max_wer_increase: float | None = None  # absolute, vs the run's reference (see judge)
    max_rtf: float | None = None
    min_speedup: float | None = None
    at: float | None = None  # judge the row at this threshold instead of the fastest passing
    on_inconclusive: str | None = None  # None: exit 3; "fail": exit 1; "pass": exit 0

    def __post_init__(self) -> None:
        if self.at is not None:
            self.at = canonical_threshold(self.at)  # the sweep stores this same rounding

    def validate(self) -> None:
        for name in ("max_wer", "max_wer_increase", "max_rtf", "min_speedup"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        for name in ("max_wer", "max_wer_increase", "max_rtf", "min_speedup", "at"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # nan passes every bar
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if self.on_inconclusive not in (None, *ON_INCONCLUSIVE):
            raise UsageError(
                f"--on-inconclusive must be one of {', '.join(ON_INCONCLUSIVE)}, "
                f"got {self.on_inconclusive!r}"
            )

    @property
    def bars(self) -> bool:
        return any(
            v is not None
            for v in (self.max_wer, self.max_wer_increase, self.max_rtf, self.min_speedup)
        )

    def exit_code(self, verdict: str) -> int:
        if verdict == INCONCLUSIVE and self.on_inconclusive is not None:
            return 1 if self.on_inconclusive == "fail" else 0
        return EXIT_CODES[verdict]


GateConfig = ReleaseBars  # the name before issue 19; kept for one release


@dataclass
class BarResult:
    """One bar judged on one row. Field names are the JSON keys."""

    bar: str  # the flag's name: max_wer, max_wer_increase, max_rtf, min_speedup
    limit: float
    value: float
    low: float | None
    high: float | None
    verdict: str
    line: str
    to_decide: str | None = None  # INCONCLUSIVE only: what more data would decide it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _three_way(low: float | None, high: float | None, limit: float, upper: bool) -> str:
    """``upper``: the figure must stay at most ``limit`` (WER, RTF); else at least (speedup)."""
    if low is None or high is None:
        return INCONCLUSIVE
    if upper:
        if high <= limit + _EPS:
            return PASS
        return FAIL if low > limit + _EPS else INCONCLUSIVE
    if low >= limit - _EPS:
        return PASS
    return FAIL if high < limit - _EPS else INCONCLUSIVE


def _more(count: int, value: float, low: float | None, high: float | None, limit: float) -> int:
    if low is None or high is None:
        return 0
    return (needed(count, (high - low) / 2, abs(value - limit)) or 0) - count


def _interval_text(value: float, low: float | None, high: float | None, fmt: str) -> str:
    if low is None or high is None:
        return f"{fmt.format(value)} [no interval]"
    return f"{fmt.format(value)} [{fmt.format(low)}, {fmt.format(high)}]"


def row_label(row: dict[str, Any]) -> str:
    """``policy @ threshold`` (``full depth`` for a static row), with ``on MODEL`` for a row of
    another model (``--models``)."""
    if row["threshold"] is None:
        text = "full depth"
    else:
        text = f"{row['policy']} @ {row['threshold']:.6g}"
    if row.get("runtime", "torch") != "torch":
        text = f"{text} [{row['runtime']}]"
    return f"{text} on {row['model']}" if row.get("model") else text


def _bar(
    bar: str,
    limit: float,
    value: float,
    low: float | None,
    high: float | None,
    *,
    upper: bool,
    count: int,
    unit: str,
    line: str,
) -> BarResult:
    """One bar: its verdict, and for INCONCLUSIVE how many more ``unit`` would decide it."""
    verdict = _three_way(low, high, limit, upper=upper)
    more = _more(count, value, low, high, limit)
    decide = f"about {more} more {unit}" if verdict == INCONCLUSIVE and more else None
    return BarResult(bar, limit, value, low, high, verdict, line, decide)


def judge_row(row: dict[str, Any], gate: ReleaseBars, reference: str) -> list[BarResult]:
    """Every given bar on ``row``. ``reference`` names what the WER increase and the speedup
    are measured against (for the lines)."""
    at = row_label(row)
    words, pairs = row["words"], row.get("timing_pairs") or 0
    out = []
    if (lim := gate.max_wer) is not None:
        low, high = row.get("wer_low"), row.get("wer_high")
        text = _interval_text(100 * row["wer"], _pts(low), _pts(high), "{:.2f}%")
        line = f"WER {text} vs --max-wer {100 * lim:.2f}% ({at})"
        out.append(
            _bar("max_wer", lim, row["wer"], low, high, upper=True, count=words,
                 unit="reference words", line=line)
        )  # fmt: skip
    if (lim := gate.max_wer_increase) is not None:
        value, low, high = row["gate_dwer"], row.get("gate_dwer_low"), row.get("gate_dwer_high")
        text = _interval_text(100 * value, _pts(low), _pts(high), "{:+.2f}")
        line = (
            f"WER increase {text} points vs {reference}, --max-wer-increase "
            f"{100 * lim:.2f} points ({at})"
        )
        out.append(
            _bar("max_wer_increase", lim, value, low, high, upper=True, count=words,
                 unit="reference words", line=line)
        )  # fmt: skip
    if (lim := gate.max_rtf) is not None:
        low, high = row.get("rtf_low"), row.get("rtf_high")
        line = f"RTF {_interval_text(row['rtf'], low, high, '{:.4f}')} vs --max-rtf {lim:g} ({at})"
        out.append(
            _bar("max_rtf", lim, row["rtf"], low, high, upper=True, count=pairs,
                 unit="timed pairs", line=line)
        )  # fmt: skip
    if (lim := gate.min_speedup) is not None:
        value = row["gate_speedup"]
        low, high = row.get("gate_speedup_low"), row.get("gate_speedup_high")
        text = _interval_text(value, low, high, "{:.3f}x")
        line = f"speedup {text} vs {reference}, --min-speedup {lim:g}x ({at})"
        out.append(
            _bar("min_speedup", lim, value, low, high, upper=False, count=pairs,
                 unit="timed pairs", line=line)
        )  # fmt: skip
    return out


def _pts(x: float | None) -> float | None:
    return None if x is None else 100 * x


def row_verdict(results: Sequence[BarResult]) -> str:
    return max((r.verdict for r in results), key=_RANK.__getitem__, default=PASS)


def judge(
    rows: Sequence[dict[str, Any]],
    gate: ReleaseBars,
    *,
    reference: str = "full depth",
    environment_reliable: bool | None = None,
) -> dict[str, Any]:
    """Pick the operating point and give the gate's verdict (the JSON ``gate`` object).

    Each row carries ``gate_dwer`` (and ``_low``/``_high``) and ``gate_speedup`` (and
    ``_low``/``_high``): the WER increase and the speedup against ``reference``."""
    if not rows:
        raise UsageError("nothing to judge: no thresholds")
    judged = [(row, judge_row(row, gate, reference)) for row in rows]
    if gate.at is not None:
        at = canonical_threshold(gate.at)
        matches = [(r, res) for r, res in judged if r["threshold"] == at]
        if not matches:
            swept = ", ".join(f"{r['threshold']:g}" for r in rows if r["threshold"] is not None)
            raise UsageError(f"--at {gate.at:g} is not among the swept thresholds ({swept})")
        row, results = matches[0]
        selection = "row at --at"
    else:
        by_verdict = {
            v: [(r, res) for r, res in judged if row_verdict(res) == v]
            for v in (PASS, INCONCLUSIVE)
        }
        if by_verdict[PASS]:
            row, results = min(by_verdict[PASS], key=lambda p: p[0]["rtf"])
            selection = (
                "fastest row meeting every bar"
                if gate.bars
                else "fastest row (no gate bars given: not an operating point)"
            )
        elif by_verdict[INCONCLUSIVE]:
            row, results = min(by_verdict[INCONCLUSIVE], key=lambda p: p[0]["rtf"])
            selection = "fastest row no bar fails: no row clears every bar with its interval"
        else:
            row, results = min(
                judged, key=lambda p: (sum(r.verdict == FAIL for r in p[1]), p[0]["rtf"])
            )
            selection = "closest miss: every row fails a bar (fewest bars failed, then fastest)"
    verdict = row_verdict(results)
    reasons = []
    if verdict == PASS and environment_reliable is False and gate.bars:
        verdict = INCONCLUSIVE
        reasons.append(
            "the environment is unreliable: full depth timed against itself (--calibrate) "
            "gives a speedup interval that excludes 1.00, so no speed figure of this run can pass"
        )
    bars = {
        "max_wer": gate.max_wer,
        "max_wer_increase": gate.max_wer_increase,
        "max_rtf": gate.max_rtf,
        "min_speedup": gate.min_speedup,
        "at": gate.at,
    }
    return {
        "verdict": verdict,
        "passed": verdict == PASS,
        "exit_code": gate.exit_code(verdict),
        "on_inconclusive": gate.on_inconclusive,
        "operating_point": dict(row),
        "results": [r.to_json() for r in results],
        "violations": [r.line for r in results if r.verdict == FAIL],
        "inconclusive": [
            r.line + (f"; {r.to_decide} would decide it" if r.to_decide else "")
            for r in results
            if r.verdict == INCONCLUSIVE
        ]
        + reasons,
        "reference": reference,
        "environment_reliable": environment_reliable,
        "bars": bars,
        "selection": selection,
    }


def resolution_warnings(gate: ReleaseBars, words: int, resolution: float | None) -> list[str]:
    """Bars finer than the data can resolve: a WER bar below one word on this set, or below
    the smallest difference the set tells from zero (``resolution``, once known)."""
    out = []
    if words and gate.max_wer_increase is not None:
        finest = max(1.0 / words, resolution or 0.0)
        if gate.max_wer_increase < finest:
            what = (
                f"one word error on {words} words"
                if resolution is None or resolution <= 1.0 / words
                else f"the smallest difference these {words} words tell from zero"
            )
            out.append(
                f"--max-wer-increase {100 * gate.max_wer_increase:.2f} points is finer than "
                f"{what} ({100 * finest:.2f} points): expect INCONCLUSIVE unless the rows are "
                "identical"
            )
    return out
