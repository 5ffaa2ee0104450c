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
    from dyncli.operating_point import resolve_run

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


def test_wer_tolerance_is_budget_or_one_word() -> None:
    from dyncli.profiling import wer_tolerance

    assert wer_tolerance(0.005, 200) == (0.005, "--wer-budget (0.50 points)")
    tol, rule = wer_tolerance(0.005, 100)
    assert tol == pytest.approx(0.01) and rule.startswith("one word error on 100 dev words")
    assert wer_tolerance(0.02, 100)[0] == 0.02


def _rows(static_wer: float, words: int, rows: list[tuple[float, float, float]]):
    static = {"policy": "static", "threshold": None, "wer": static_wer, "words": words,
              "flops_ratio": 1.0}  # fmt: skip
    return static, [
        {"policy": "blank-skip", "threshold": th, "wer": wer, "words": words, "flops_ratio": f}
        for th, wer, f in rows
    ]


def test_choose_operating_point_rules(setup, monkeypatch) -> None:  # noqa: F811
    from dyncli import profiling
    from dyncli.checkpoint import load_checkpoint

    ckpt = load_checkpoint(setup["ckpt"])
    # 200 dev words: budget 0 -> one word (0.5 points) decides; 0.9 costs exactly one word.
    sweep = _rows(0.10, 200, [(0.5, 0.115, 0.40), (0.9, 0.105, 0.50), (0.99, 0.10, 0.60)])
    grids: list[list[float]] = []

    def fake_sweep(ckpt, utts, waves, policy, thresholds, settings, table=None):
        grids.append(list(thresholds))
        return sweep

    monkeypatch.setattr(profiling, "sweep_rows", fake_sweep)
    choice = profiling.choose_operating_point(ckpt, [], policy="blank-skip", wer_budget=0.0)
    # the default sweep plus the conservative thresholds nearer full depth
    assert grids[-1] == [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
    assert choice.point is not None and choice.point["threshold"] == 0.9
    assert choice.point["rule"].startswith("one word error on 200 dev words")
    assert choice.point["layer"] in ckpt.model.exits and choice.point["neighbours"] == 1
    # a budget above one word decides, and the cheapest row within it wins
    choice = profiling.choose_operating_point(ckpt, [], policy="blank-skip", wer_budget=0.02)
    assert choice.point is not None and choice.point["threshold"] == 0.5
    assert choice.rule.startswith("--wer-budget")
    # nothing qualifies: no point, and the closest row with its distance
    sweep = _rows(0.10, 200, [(0.5, 0.13, 0.40), (0.9, 0.12, 0.50)])
    monkeypatch.setattr(profiling, "sweep_rows", lambda *a, **k: sweep)
    choice = profiling.choose_operating_point(ckpt, [], policy="blank-skip", wer_budget=0.0)
    assert choice.point is None and choice.closest is not None
    assert choice.closest["threshold"] == 0.9
    assert choice.excess == pytest.approx(0.12 - 0.10 - 0.005)
