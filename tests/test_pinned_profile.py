"""``profile --format json`` on the bundled models gives the results stored in tests/data/pinned/.

This pins behaviour across the code-layout refactor of issue 19: moving modules must leave WER,
CER, the WER differences and their (seeded) bootstrap intervals, FLOPs, average depth, skipped
fractions, the swept thresholds and the stored operating point exactly as they were. Timing and
machine-dependent fields are excluded (``tests/pinned_report.py`` lists what is kept and why).
Strings, ints, booleans and nulls must match exactly (type too); floats to within
``rel=1e-6, abs=1e-9``.

A failure means results changed. If that is *meant* (a change that should alter results, said in
CHANGELOG.md), regenerate the stored files with

    .venv/bin/python tests/data/pinned/make_pinned.py

and commit them with the change; never regenerate them to make a refactor pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import dyncli
from tests.conftest import invoke_cli
from tests.pinned_report import COMMON_ARGS, MODELS, pinned_fields, row_label

PINNED = Path(__file__).resolve().parent / "data" / "pinned"
ASSETS = Path(dyncli.__file__).resolve().parent / "assets"


def differences(got: Any, stored: Any, where: str) -> list[str]:
    """Every place where ``got`` differs from ``stored``, one line each, named by its path."""
    if isinstance(stored, dict) and isinstance(got, dict):
        lines = [f"{where}.{k}: missing (stored {stored[k]!r})" for k in stored if k not in got]
        lines += [f"{where}.{k}: not in the stored report" for k in got if k not in stored]
        for k in stored.keys() & got.keys():
            lines += differences(got[k], stored[k], f"{where}.{k}")
        return lines
    if isinstance(stored, list) and isinstance(got, list):
        if len(got) != len(stored):
            return [f"{where}: {len(got)} items, stored {len(stored)}: {got!r} vs {stored!r}"]
        return [
            line
            for i, (g, s) in enumerate(zip(got, stored, strict=True))
            for line in differences(g, s, f"{where}[{i}]")
        ]
    if isinstance(stored, float) and isinstance(got, int | float) and not isinstance(got, bool):
        same = got == pytest.approx(stored, rel=1e-6, abs=1e-9)
    else:
        same = type(got) is type(stored) and got == stored
    return [] if same else [f"{where}: got {got!r}, stored {stored!r}"]


@pytest.mark.parametrize("name", list(MODELS))
def test_profile_matches_pinned_report(name: str) -> None:
    stored = json.loads((PINNED / f"{name}.json").read_text())
    result = invoke_cli("profile", ASSETS / f"{name}.ckpt", *MODELS[name], *COMMON_ARGS)
    assert result.exit_code == 0, result.output
    got = pinned_fields(json.loads(result.stdout))

    # Rows are named by policy@threshold, so a message says which row changed, not its index.
    got_rows = [row_label(r) for r in got["rows"]]
    stored_rows = [row_label(r) for r in stored["rows"]]
    assert got_rows == stored_rows, f"{name}: rows {got_rows}, stored {stored_rows}"

    lines = []
    for key in stored.keys() | got.keys():
        if key not in got or key not in stored:
            lines.append(f"{key}: only in the {'stored' if key in stored else 'new'} report")
        elif key == "rows":
            for label, g, s in zip(got_rows, got["rows"], stored["rows"], strict=True):
                lines += differences(g, s, f"row {label}")
        elif key == "static":
            lines += differences(got[key], stored[key], "row static")
        else:
            lines += differences(got[key], stored[key], key)
    assert not lines, f"{name}: profile results differ from {name}.json:\n" + "\n".join(
        sorted(lines)
    )
