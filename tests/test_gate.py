"""The three-way gate and the paired timer (dyncli.measure.gate / timing, issue 18 parts 3-4).

Every verdict is driven by doctored streams: timings whose speedup is known, and per-utterance
error counts whose WER difference is known, so each test knows which side of its bar the
whole interval lies on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dyncli.measure.gate import FAIL, INCONCLUSIVE, PASS, ReleaseBars, judge
from dyncli.measure.profile import _gate_speedup, timing_fields
from dyncli.measure.sweep import wer_delta
from dyncli.measure.timing import Arm, ArmTimes, TimingRun, time_interleaved
from tests.conftest import invoke_cli


def _run(ratio: float, pairs: int = 400, noise: float = 0.05, seed: int = 0) -> TimingRun:
    """Two arms: arm 1 is ``ratio`` times faster than arm 0, with multiplicative noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.004, 0.008, pairs)
    other = base / ratio * rng.normal(1.0, noise, pairs)
    arms = []
    for times in (base, other):
        t = ArmTimes(wall=list(times), cpu=list(times), encoder=list(times * 0.8))
        t.round_wall = [float(times.sum())]
        arms.append(t)
    return TimingRun(arms, units=pairs, rounds=1, stopped="doctored", seconds=1.0,
                     precision=None, time_budget=None)  # fmt: skip


def _timed_row(run: TimingRun) -> dict[str, Any]:
    row: dict[str, Any] = {"policy": "blank-skip", "threshold": 0.9, "wer": 0.1, "words": 500}
    row.update(timing_fields(run, 1, [0.5] * run.units, 0.5 * run.units))
    row.update(_gate_speedup(run, 0, 1))
    return row


def _errors_row(reference: list[int], errors: list[int], words: list[int]) -> dict[str, Any]:
    d = wer_delta(reference, errors, words, "gate_dwer")
    return {
        "policy": "blank-skip",
        "threshold": 0.9,
        "wer": sum(errors) / sum(words),
        "words": sum(words),
        "rtf": 0.01,
        **{k: v for k, v in d.items() if k in ("gate_dwer", "gate_dwer_low", "gate_dwer_high")},
    }


def test_speed_bar_all_three_verdicts_from_a_doctored_timing_stream() -> None:
    row = _timed_row(_run(1.5))
    low, high = row["gate_speedup_low"], row["gate_speedup_high"]
    assert low < 1.5 < high and high - low < 0.05  # 400 pairs, 5% noise: a narrow interval
    assert judge([row], ReleaseBars(min_speedup=1.2))["verdict"] == PASS
    failed = judge([row], ReleaseBars(min_speedup=2.0))
    assert failed["verdict"] == FAIL and failed["exit_code"] == 1
    assert "--min-speedup 2x" in failed["violations"][0]
    unsure = judge([row], ReleaseBars(min_speedup=row["gate_speedup"] + 0.002))
    assert unsure["verdict"] == INCONCLUSIVE and unsure["exit_code"] == 3
    assert not unsure["passed"] and unsure["violations"] == []
    assert "more timed pairs would decide it" in unsure["inconclusive"][0]


def test_wer_bar_all_three_verdicts_from_doctored_error_streams() -> None:
    words = [5] * 100
    reference = [0] * 100
    errors = [1 if i % 10 == 0 else 0 for i in range(100)]  # 10 more errors in 500 words: +2.0
    row = _errors_row(reference, errors, words)
    assert row["gate_dwer"] == pytest.approx(0.02)
    assert 0 < row["gate_dwer_low"] < 0.02 < row["gate_dwer_high"] < 0.04
    assert judge([row], ReleaseBars(max_wer_increase=0.05))["verdict"] == PASS
    assert judge([row], ReleaseBars(max_wer_increase=0.002))["verdict"] == FAIL
    unsure = judge([row], ReleaseBars(max_wer_increase=0.02))
    assert unsure["verdict"] == INCONCLUSIVE
    assert "more reference words would decide it" in unsure["inconclusive"][0]


def test_identical_rows_pass_a_zero_wer_bar() -> None:
    row = _errors_row([1, 0, 2], [1, 0, 2], [4, 4, 4])
    assert (row["gate_dwer_low"], row["gate_dwer_high"]) == (0.0, 0.0)
    assert judge([row], ReleaseBars(max_wer_increase=0.0))["verdict"] == PASS


def test_the_operating_point_prefers_pass_then_inconclusive_then_the_closest_miss() -> None:
    fast = {**_timed_row(_run(2.0)), "threshold": 0.5, "rtf": 0.005}
    slow = {**_timed_row(_run(1.5, seed=1)), "threshold": 0.9, "rtf": 0.007}
    verdict = judge([fast, slow], ReleaseBars(min_speedup=1.8))
    assert verdict["verdict"] == PASS and verdict["operating_point"]["threshold"] == 0.5
    bar = fast["gate_speedup"]  # inside the fast row's interval; the slow row fails it
    verdict = judge([fast, slow], ReleaseBars(min_speedup=bar))
    assert verdict["verdict"] == INCONCLUSIVE and verdict["operating_point"]["threshold"] == 0.5
    verdict = judge([fast, slow], ReleaseBars(min_speedup=5.0))
    assert verdict["verdict"] == FAIL and verdict["selection"].startswith("closest miss")


def test_on_inconclusive_maps_the_exit_code_but_not_the_verdict() -> None:
    row = _timed_row(_run(1.5))
    bar = row["gate_speedup"]
    for mapping, code in ((None, 3), ("fail", 1), ("pass", 0)):
        verdict = judge([row], ReleaseBars(min_speedup=bar, on_inconclusive=mapping))
        assert verdict["verdict"] == INCONCLUSIVE and verdict["exit_code"] == code


def test_an_unreliable_environment_cannot_pass() -> None:
    row = _timed_row(_run(1.5))
    verdict = judge([row], ReleaseBars(min_speedup=1.2), environment_reliable=False)
    assert verdict["verdict"] == INCONCLUSIVE
    assert any("environment is unreliable" in line for line in verdict["inconclusive"])
    verdict = judge([row], ReleaseBars(min_speedup=2.0), environment_reliable=False)
    assert verdict["verdict"] == FAIL  # a fail stays a fail


def test_a_self_copy_contains_one_and_a_real_speedup_does_not() -> None:
    from dyncli.measure.profile import _interval_fields

    copy = _interval_fields("s", _run(1.0, noise=0.03), 1, "wall")
    assert copy["s_low"] < 1.0 < copy["s_high"]
    assert (copy["s_high"] - copy["s_low"]) / 2 < 0.03
    fast = _interval_fields("s", _run(1.1, noise=0.03), 1, "wall")
    assert fast["s_low"] > 1.0


def test_the_timer_alternates_the_order_and_stops_on_its_budget() -> None:
    calls: list[tuple[int, int]] = []

    def arm(k: int) -> Arm:
        def run(unit: int) -> float:
            calls.append((k, unit))
            return 0.0

        return Arm(str(k), run)

    timed = time_interleaved([arm(0), arm(1), arm(2)], 4, threads=1, rounds=2, warmup=0)
    assert timed.rounds == 2 and timed.pairs == 8 and timed.stopped.startswith("--repeats 2")
    # per unit every arm back to back; each unit's order is the previous one's reverse, or a
    # fresh random order after that (ABBA), so every arm runs first and last equally often
    orders = [[k for k, u in calls[3 * v : 3 * v + 3]] for v in range(8)]
    assert all([u for _, u in calls[3 * v : 3 * v + 3]] == [v % 4] * 3 for v in range(8))
    for v in range(0, 8, 2):
        assert sorted(orders[v]) == [0, 1, 2] and orders[v + 1] == orders[v][::-1]
    assert len({tuple(o) for o in orders[::2]}) > 1  # not one fixed order
    calls.clear()
    assert all(len(t.wall) == 8 and len(t.round_wall) == 2 for t in timed.arms)
    auto = time_interleaved(
        [arm(0), arm(1)], 3, threads=1, precision=1e-12, time_budget=0.05, warmup=0
    )
    assert auto.rounds >= 2 and auto.stopped.startswith("time budget spent")


def test_the_timer_stops_when_precise_enough() -> None:
    import time

    def steady(unit: int) -> float:
        time.sleep(0.002)
        return 0.0

    timed = time_interleaved(
        [Arm("a", steady), Arm("b", steady)], 4, threads=1, precision=0.5, time_budget=30
    )
    assert timed.stopped.startswith("precision reached") and timed.rounds == 2


# --- the CLI contract -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dyn(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> dict[str, Path]:
    from dyncli.checkpoint import load_checkpoint, save_checkpoint
    from dyncli.training import ExitTraining, early_exit_method
    from tests.conftest import WORDS, write_wav

    root = tmp_path_factory.mktemp("gate")
    rows = []
    for i in range(3):
        write_wav(root / f"u{i}.wav", seconds=0.6 + 0.2 * i, freq=300 + 90 * i)
        rows.append({"audio_filepath": f"u{i}.wav", "text": " ".join(WORDS[: 1 + i])})
    (root / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ckpt = load_checkpoint(tiny_ckpt)
    ckpt.model.attach_exits([1, 2])
    ckpt.method = early_exit_method(ExitTraining(exits=[1, 2]), training="fine-tune")
    save_checkpoint(root / "dyn.ckpt", ckpt)
    return {"ckpt": root / "dyn.ckpt", "data": root / "m.jsonl", "root": root}


def _doctored_timer(ratio: float, noise: float) -> Any:
    """A stand-in for time_interleaved: every arm after the first is ``ratio`` times faster."""

    def fake(arms: Any, units: int, **_: Any) -> TimingRun:
        rng = np.random.default_rng(0)
        pairs = 60 * units
        base = rng.uniform(0.004, 0.008, pairs)
        times = []
        for k in range(len(arms)):
            t = base if k == 0 else base / ratio * rng.normal(1.0, noise, pairs)
            a = ArmTimes(wall=list(t), cpu=list(t), encoder=list(t))
            a.round_wall = [float(t[r::60].sum()) for r in range(60)]
            times.append(a)
        return TimingRun(times, units, 60, "doctored", 1.0, 0.03, 120.0)

    return fake


@pytest.mark.parametrize(
    ("bar", "extra", "code", "verdict"),
    [
        ("1.2", (), 0, "PASS"),
        ("2.0", (), 1, "FAIL"),
        ("1.5", (), 3, "INCONCLUSIVE"),
        ("1.5", ("--on-inconclusive", "fail"), 1, "INCONCLUSIVE"),
        ("1.5", ("--on-inconclusive", "pass"), 0, "INCONCLUSIVE"),
    ],
)
def test_profile_exit_codes_follow_the_verdict(
    dyn, tmp_path, monkeypatch, bar, extra, code, verdict
) -> None:
    import dyncli.measure.profile as profiling
    import dyncli.measure.timing as timing

    monkeypatch.setattr(profiling, "time_interleaved", _doctored_timer(1.5, 0.05))
    assert timing.time_interleaved is not profiling.time_interleaved
    out = tmp_path / "r.json"
    result = invoke_cli(
        "profile", dyn["ckpt"], "--data", dyn["data"], "--thresholds", "0.9",
        "--min-speedup", bar, "--json", out, *extra,
    )  # fmt: skip
    assert result.exit_code == code, result.output
    report = json.loads(out.read_text())
    assert report["gate"]["verdict"] == verdict
    if verdict == "INCONCLUSIVE":
        assert "gate inconclusive: speedup" in result.stderr
        assert "more timed pairs would decide it" in result.stderr


def test_profile_calibrate_reports_the_noise_floor(dyn, tmp_path) -> None:
    out = tmp_path / "r.json"
    result = invoke_cli(
        "profile", dyn["ckpt"], "--data", dyn["data"], "--thresholds", "0.9", "--repeats", "2",
        "--calibrate", "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    floor = json.loads(out.read_text())["timing"]["noise_floor"]
    assert floor["pairs"] == 6 and floor["low"] <= floor["speedup"] <= floor["high"]
    assert floor["reliable"] is (floor["low"] <= 1.0 <= floor["high"])
    assert "noise floor (--calibrate" in result.stdout


def test_profile_baseline_compares_every_row_with_the_static_model(dyn, tiny_ckpt, tmp_path):
    out = tmp_path / "r.json"
    result = invoke_cli(
        "profile", dyn["ckpt"], "--data", dyn["data"], "--thresholds", "0.9", "--repeats", "2",
        "--baseline", tiny_ckpt, "--max-wer-increase", "1.0", "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    base = [r for r in report["rows"] if r.get("baseline")]
    assert len(base) == 1 and base[0]["threshold"] is None
    assert (base[0]["dwer_baseline"], base[0]["dwer_baseline_low"]) == (0.0, 0.0)
    for row in report["rows"]:
        assert {"dwer_baseline", "speedup_baseline", "speedup_baseline_low"} <= set(row)
    assert report["gate"]["reference"].startswith("the --baseline model")
    assert not report["gate"]["operating_point"].get("baseline")  # never judged itself


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--repeats", "0"), "--repeats must be between 1 and 1000"),
        (("--repeats", "often"), "--repeats must be auto or a whole number"),
        (("--precision", "0"), "--precision must be between 0 and 1"),
        (("--time-budget", "-1"), "--time-budget must be a positive"),
        (("--on-inconclusive", "maybe"), "--on-inconclusive must be one of fail, pass"),
        (("--baseline", "{ckpt}"), "--baseline {ckpt} is the same file as CHECKPOINT"),
    ],
)
def test_timing_and_gate_options_are_checked(dyn, args, expected) -> None:
    args = tuple(a.format(ckpt=dyn["ckpt"]) for a in args)
    expected = expected.format(ckpt=dyn["ckpt"])
    result = invoke_cli("profile", dyn["ckpt"], "--data", dyn["data"], *args)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and "Traceback" not in result.output


def test_gate_config_is_the_old_name_of_release_bars() -> None:
    from dyncli.measure.gate import GateConfig

    assert GateConfig is ReleaseBars
