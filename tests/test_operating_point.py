"""The stored operating point is the default everywhere; its choice is robust on small dev sets."""

from __future__ import annotations

import json

import pytest

from dyncli.errors import UsageError
from tests.conftest import invoke_cli
from tests.test_profile import setup  # noqa: F401  (the module-scoped tiny dynamic model)


@pytest.fixture(scope="module")
def stored(setup, tmp_path_factory):  # noqa: F811
    """The tiny dynamic model with a stored blank-skip operating point at the exit after 1."""
    from dyncli.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(setup["ckpt"])
    assert ckpt.method is not None
    ckpt.method["operating_point"] = {
        "policy": "blank-skip", "threshold": 0.6, "layer": 1, "neighbours": 0,
    }  # fmt: skip
    path = tmp_path_factory.mktemp("op") / "op.ckpt"
    save_checkpoint(path, ckpt)
    return path


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_evaluate_runs_the_stored_operating_point_like_profile(setup, stored) -> None:  # noqa: F811
    data = setup["data"]
    ev = _json(invoke_cli("evaluate", stored, "--data", data, "--repeats", "1", "--json", "-"))
    assert ev["run"] == {
        "policy": "blank-skip",
        "threshold": 0.6,
        "config": {"layer": 1, "neighbours": 0},
        "source": "stored operating point",
    }
    full = _json(
        invoke_cli("evaluate", stored, "--data", data, "--repeats", "1", "--full-depth",
                   "--json", "-")
    )  # fmt: skip
    assert full["run"]["policy"] == "static" and full["run"]["source"] == "--full-depth"
    prof = _json(
        invoke_cli("profile", stored, "--data", data, "--repeats", "1", "--thresholds", "0.6",
                   "--json", "-")
    )  # fmt: skip
    (row,) = prof["rows"]
    assert row["stored_operating_point"]
    assert ev["result"]["wer"] == row["wer"] and ev["result"]["cer"] == row["cer"]
    assert full["result"]["wer"] == prof["static"]["wer"]


def test_transcribe_says_what_ran(setup, stored) -> None:  # noqa: F811
    wav = setup["root"] / "u0.wav"
    result = invoke_cli("transcribe", stored, wav)
    assert result.exit_code == 0, result.output
    assert "ran: blank-skip @ 0.6, layer=1, neighbours=0 (stored operating point)" in result.stderr
    assert result.stdout.startswith(f"{wav}\t")
    result = invoke_cli("transcribe", stored, wav, "--full-depth")
    assert "ran: full depth (--full-depth)" in result.stderr


def test_resolve_run_rules(setup, stored) -> None:  # noqa: F811
    from dyncli.checkpoint import load_checkpoint
    from dyncli.dynamic.operating_point import resolve_run

    dyn = load_checkpoint(setup["ckpt"])  # exits, no stored point
    _, choice = resolve_run(dyn)
    assert choice.full_depth and "no stored operating point" in choice.source
    _, choice = resolve_run(dyn, policy="blank-skip", threshold=0.8)
    assert choice.policy == "blank-skip" and choice.threshold == 0.8
    with pytest.raises(UsageError, match="needs --threshold"):
        resolve_run(dyn, policy="blank-skip")
    with pytest.raises(UsageError, match="--full-depth"):
        resolve_run(dyn, threshold=0.5, full_depth=True)
    static = load_checkpoint(setup["static"])
    with pytest.raises(UsageError, match="static model"):
        resolve_run(static, policy="blank-skip", threshold=0.5)
    op = load_checkpoint(stored)
    _, choice = resolve_run(op, threshold=0.1234567)  # a threshold alone keeps the policy
    assert choice.policy == "blank-skip" and choice.threshold == 0.123457
    assert choice.config == {"layer": 1, "neighbours": 0}


def _rows(static_wer: float, words: int, rows: list[tuple]):
    """A doctored sweep: (threshold, wer, flops_ratio, dwer_low, dwer_high, differing)."""
    static = {"policy": "static", "threshold": None, "wer": static_wer, "words": words,
              "flops_ratio": 1.0}  # fmt: skip
    return static, [
        {
            "policy": "blank-skip",
            "threshold": th,
            "wer": wer,
            "words": words,
            "flops_ratio": f,
            "dwer": wer - static_wer,
            "dwer_low": low,
            "dwer_high": high,
            "dwer_prob_improvement": 0.0,
            "dwer_differing": differing,
            "dwer_resolution": max((high - low) / 2, 1 / words) if differing else 1 / words,
        }
        for th, wer, f, low, high, differing in rows
    ]


@pytest.fixture
def doctored(setup, monkeypatch):  # noqa: F811
    """The tiny dynamic model, with ``measure.sweep.sweep_rows`` answering ``sweeps[-1]``; the
    thresholds each call asked for are kept in ``grids``."""
    from dyncli.checkpoint import load_checkpoint
    from dyncli.measure import sweep

    state: dict = {"sweeps": [], "grids": []}

    def fake_sweep(ckpt, utts, waves, policy, thresholds, settings, table=None):
        state["grids"].append(list(thresholds))
        return state["sweeps"][-1]

    monkeypatch.setattr(sweep, "sweep_rows", fake_sweep)
    state["ckpt"] = load_checkpoint(setup["ckpt"])
    return state


def test_upper_bound_rule_is_more_conservative_than_the_point_estimate(doctored) -> None:
    from dyncli.dynamic.operating_point import choose_operating_point

    ckpt = doctored["ckpt"]
    # 0.5 costs nothing on average but its interval is wide (+-2 points); 0.9 costs one word
    # of 200 with a narrow interval; 0.99 equals full depth on every utterance ([0, 0]).
    doctored["sweeps"].append(
        _rows(
            0.10,
            200,
            [
                (0.5, 0.100, 0.40, -0.020, 0.020, 9),
                (0.9, 0.105, 0.50, 0.000, 0.0075, 1),
                (0.99, 0.100, 0.60, 0.0, 0.0, 0),
            ],
        )
    )
    choice = choose_operating_point(ckpt, [], policy="blank-skip", wer_budget=0.01)
    # the default sweep plus the conservative thresholds nearer full depth
    assert doctored["grids"][-1] == [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
    # the point estimate (dwer 0 <= 1 point) would take 0.5; its upper bound (2 points) does not
    assert choice.point is not None and choice.point["threshold"] == 0.9
    assert choice.warning is None and "warning" not in choice.point
    assert choice.point["layer"] in ckpt.model.exits and choice.point["neighbours"] == 1
    assert choice.rule.startswith("upper bound of the 95% interval of dev dWER")
    # a budget that covers 0.5's whole interval takes it
    choice = choose_operating_point(ckpt, [], policy="blank-skip", wer_budget=0.02)
    assert choice.point is not None and choice.point["threshold"] == 0.5


def test_stored_point_records_the_interval_and_the_dev_size(doctored) -> None:
    from dyncli.dynamic.operating_point import choose_operating_point

    doctored["sweeps"].append(
        _rows(0.10, 200, [(0.5, 0.13, 0.4, 0.01, 0.05, 5), (0.9, 0.105, 0.5, -0.005, 0.012, 3)])
    )
    choice = choose_operating_point(doctored["ckpt"], [], policy="blank-skip", wer_budget=0.015)
    point = choice.point
    assert point is not None and point["threshold"] == 0.9
    assert point["dev_dwer"] == pytest.approx(0.005)
    assert (point["dev_dwer_low"], point["dev_dwer_high"]) == (-0.005, 0.012)
    assert point["dev_dwer_confidence"] == 0.95 and point["dev_dwer_differing"] == 3
    assert point["dev_words"] == 200 and point["dev_utterances"] == 0
    assert point["dev_dwer_method"].startswith("paired bootstrap over utterances (BCa")
    assert point["dev_resolution"] == pytest.approx(0.0085)  # 0.9's half-width, the narrowest
    assert point["wer_budget"] == 0.015 and point["static_dev_wer"] == 0.10
    assert point["dev_wer"] == 0.105 and point["flops_ratio"] == 0.5
    assert "tolerance" not in point
    # ties in executed FLOPs go to the lower WER
    doctored["sweeps"].append(
        _rows(0.10, 200, [(0.8, 0.11, 0.5, 0.0, 0.01, 2), (0.9, 0.10, 0.5, -0.01, 0.01, 2)])
    )
    choice = choose_operating_point(doctored["ckpt"], [], policy="blank-skip", wer_budget=0.01)
    assert choice.point is not None and choice.point["threshold"] == 0.9


def test_unresolvable_budget_names_the_budget_the_dev_set_resolves(doctored) -> None:
    from dyncli.dynamic.operating_point import choose_operating_point

    doctored["sweeps"].append(
        _rows(
            0.10,
            200,
            [
                (0.5, 0.12, 0.40, 0.005, 0.035, 6),
                (0.9, 0.105, 0.50, 0.000, 0.0124, 1),
                (0.99, 0.100, 0.60, 0.0, 0.0, 0),
            ],
        )
    )
    choice = choose_operating_point(doctored["ckpt"], [], policy="blank-skip", wer_budget=0.005)
    assert choice.resolvable == pytest.approx(0.0062)  # 0.9's half-width: the narrowest
    assert choice.warning == (
        "the dev set (200 words) cannot resolve a 0.50-point budget; the smallest it resolves "
        "is 0.62 points: give --wer-budget 0.0062 or a larger --dev set"
    )
    # the rule is kept: only the threshold identical to full depth on dev qualifies
    assert choice.point is not None and choice.point["threshold"] == 0.99
    assert choice.point["warning"] == choice.warning
    assert (choice.point["dev_dwer_low"], choice.point["dev_dwer_high"]) == (0.0, 0.0)
    # a budget below one word error, when no threshold changes a dev utterance: 1 / words
    doctored["sweeps"].append(_rows(0.10, 400, [(0.9, 0.10, 0.5, 0.0, 0.0, 0)]))
    choice = choose_operating_point(doctored["ckpt"], [], policy="blank-skip", wer_budget=0.0)
    assert choice.resolvable == pytest.approx(1 / 400)
    assert choice.warning is not None and "give --wer-budget 0.0025" in choice.warning
    assert "larger --dev set" not in choice.warning  # no dev set resolves a budget of 0
    assert choice.point is not None and choice.point["threshold"] == 0.9  # [0, 0] qualifies
    # a budget the set resolves: no warning
    choice = choose_operating_point(doctored["ckpt"], [], policy="blank-skip", wer_budget=0.0025)
    assert choice.warning is None


def test_nothing_qualifies_names_the_closest_upper_bound(doctored) -> None:
    from dyncli.dynamic.operating_point import choose_operating_point

    doctored["sweeps"].append(
        _rows(0.10, 200, [(0.5, 0.13, 0.40, 0.01, 0.05, 8), (0.9, 0.10, 0.50, -0.01, 0.02, 4)])
    )
    choice = choose_operating_point(doctored["ckpt"], [], policy="blank-skip", wer_budget=0.01)
    assert choice.point is None and choice.closest is not None
    # the lowest upper bound, though its point estimate is not the lowest-FLOP one
    assert choice.closest["threshold"] == 0.9
    assert choice.excess == pytest.approx(0.02 - 0.01)


def test_report_shows_the_interval_and_the_warning(doctored, capsys) -> None:
    from dyncli.cli.job import report_choice
    from dyncli.dynamic.operating_point import choose_operating_point

    class Lines:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def message(self, text: str) -> None:
            self.lines.append(text)

    doctored["sweeps"].append(
        _rows(0.10, 200, [(0.5, 0.12, 0.4, 0.005, 0.035, 6), (0.99, 0.10, 0.6, 0.0, 0.0, 0)])
    )
    choice = choose_operating_point(doctored["ckpt"], [], policy="blank-skip", wer_budget=0.005)
    out = Lines()
    report_choice(out, choice, "blank-skip")
    text = "\n".join(out.lines)
    assert "threshold 0.5: WER 12.00%, dWER +2.0 [+0.5, +3.5] points" in text
    assert "threshold 0.99, dev WER 10.00% vs 10.00% full depth, +0.0 [+0.0, +0.0] points on " \
        "200 dev words" in text  # fmt: skip
    assert "warning: the dev set (200 words) cannot resolve a 0.50-point budget" in (
        capsys.readouterr().err
    )
    doctored["sweeps"].append(_rows(0.10, 200, [(0.5, 0.12, 0.4, 0.005, 0.035, 6)]))
    choice = choose_operating_point(doctored["ckpt"], [], policy="blank-skip", wer_budget=0.02)
    out = Lines()
    report_choice(out, choice, "blank-skip")
    assert out.lines[-1].startswith("no threshold met the rule on dev")
    closest = out.lines[-1]
    assert "+2.0 [+0.5, +3.5] points on 200 dev words: upper bound 1.50 points over" in closest


def test_real_sweep_stores_the_interval(setup) -> None:  # noqa: F811
    """No doctoring: the tiny model's dev sweep gives every row an interval, and the stored
    record carries it with the dev set's size."""
    from dyncli.checkpoint import load_checkpoint
    from dyncli.data.dataset import load_utterances
    from dyncli.data.manifest import read_manifest
    from dyncli.dynamic.operating_point import choose_operating_point

    ckpt = load_checkpoint(setup["ckpt"])
    utts, _ = load_utterances(read_manifest(setup["data"]), ckpt.model.sample_rate)
    choice = choose_operating_point(
        ckpt, utts, policy="blank-skip", wer_budget=1.0, thresholds=[0.5, 0.999]
    )
    assert choice.point is not None and choice.utterances == len(utts) == 3
    point = choice.point
    assert point["dev_utterances"] == 3 and point["dev_words"] == choice.static["words"]
    assert point["dev_dwer_low"] <= point["dev_dwer"] <= point["dev_dwer_high"] <= 1.0
    for row in choice.rows:  # a row equal to full depth on every utterance has [0, 0]
        if row["dwer_differing"] == 0:
            assert (row["dwer_low"], row["dwer_high"]) == (0.0, 0.0)


def test_old_format_point_still_loads_and_runs(tmp_path) -> None:
    """A record from before the interval (``tolerance``, no ``dev_dwer_*``; the bundled model
    of 2026-11-23 carried one): it loads, ``inspect`` shows it, ``transcribe`` runs it."""
    import torch

    from dyncli import assets

    payload = torch.load(assets.DEMO_DYNAMIC, weights_only=True)
    # the record a checkpoint of 2026-11-23 carries (the bundled model of that day)
    payload["method"]["operating_point"] = point = {
        "policy": "blank-skip",
        "threshold": 0.8,
        "layer": 4,
        "neighbours": 1,
        "dev_wer": 0.02,
        "static_dev_wer": 0.02,
        "dev_words": 200,
        "flops_ratio": 0.42,
        "wer_budget": 0.005,
        "tolerance": 0.005,
        "rule": "--wer-budget (0.50 points)",
        "chosen_on": "dev set given to convert",
    }
    old = tmp_path / "old.ckpt"
    torch.save(payload, old)
    info = _json(invoke_cli("inspect", old, "--json", "-"))
    assert info["operating_point"]["threshold"] == point["threshold"]
    first = json.loads(assets.EVAL_MANIFEST.read_text().splitlines()[0])
    wav = assets.EVAL_MANIFEST.parent / first["audio_filepath"]
    result = invoke_cli("transcribe", old, wav)
    assert result.exit_code == 0, result.output
    assert f"ran: blank-skip @ {point['threshold']:g}" in result.stderr
    assert "(stored operating point)" in result.stderr


def test_convert_warns_when_the_dev_set_cannot_resolve_the_budget(setup, tmp_path) -> None:  # noqa: F811
    from dyncli.checkpoint import load_checkpoint

    out = tmp_path / "op.ckpt"
    data = setup["data"]
    result = invoke_cli(
        "convert", setup["static"], "-o", out, "--exits", "1,2", "--train", data, "--dev", data,
        "--max-steps", "1", "--epochs", "1", "--threads", "1", "--wer-budget", "0.0001",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("warning: the dev set")]
    assert "cannot resolve a 0.01-point budget; the smallest it resolves is" in line
    point = (load_checkpoint(out).method or {})["operating_point"]
    if point is not None:  # only a threshold with the same dev errors as full depth qualifies
        assert point["warning"] == line.removeprefix("warning: ")
        assert point["dev_dwer_high"] <= 0.0001
