"""docs/cli.md is generated from --help; it must match the code."""

from __future__ import annotations

from pathlib import Path

from dyncli.cli.reference import render_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    expected = render_reference()
    assert DOC.read_text(encoding="utf-8") == expected, (
        "docs/cli.md is out of date: run 'make docs'"
    )
    assert "## dyncli profile" in expected and "--max-wer-increase" in expected
