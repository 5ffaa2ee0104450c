"""Output that loses nothing: piped tables at full width, TSV with every figure, --format json."""

from __future__ import annotations

import json

from dyncli.cli.profile import COLUMNS
from tests.conftest import invoke_cli
from tests.test_profile import setup  # noqa: F401  (the module-scoped tiny dynamic model)


def _profile(setup, *extra: object):  # noqa: F811
    return invoke_cli(
        "profile", setup["ckpt"], "--data", setup["data"], "--repeats", "1", "--threads", "1",
        "--thresholds", "0.5,0.9", *extra,
    )  # fmt: skip


def test_piped_profile_table_keeps_every_header_and_figure(setup, tmp_path) -> None:  # noqa: F811
    # A long data path makes the footer lines far wider than any terminal.
    deep = tmp_path / ("a-rather-long-directory-name-" * 4)
    deep.mkdir()
    manifest = deep / "m.jsonl"
    manifest.write_text(
        setup["data"].read_text().replace('"u', f'"{setup["root"]}/u'), encoding="utf-8"
    )
    out = tmp_path / "r.json"
    result = invoke_cli(
        "profile", setup["ckpt"], "--data", manifest, "--repeats", "1", "--thresholds",
        "0.5,0.9", "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "…" not in text
    header_line = next(line for line in text.splitlines() if "threshold" in line)
    for header in COLUMNS:
        assert header in header_line, header  # every header whole, on one line
    report = json.loads(out.read_text())
    for row in report["rows"]:
        lo, hi = row["speedup_low"], row["speedup_high"]
        assert f"{row['speedup']:.2f}x [{lo:.2f}, {hi:.2f}]" in text
        assert f"{row['gflops_per_audio_second']:.3f}" in text
        low, high = 100 * row["dwer_low"], 100 * row["dwer_high"]
        assert f"{100 * row['dwer']:+.1f} [{low:+.1f}, {high:+.1f}]" in text
    assert f"data: {manifest} (3 utterances" in text  # the footer line is not wrapped


def test_tsv_has_every_figure_of_the_json_report(setup, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "r.json"
    result = _profile(setup, "--format", "tsv", "--json", out)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    report = json.loads(out.read_text())
    records = [report["static"], *report["rows"]]
    assert len(lines) == 1 + len(records)  # one header line, then one line per row
    header = lines[0].split("\t")
    assert set(header) == {k for r in records for k in r}
    for line, record in zip(lines[1:], records, strict=True):
        cells = dict(zip(header, line.split("\t"), strict=True))
        for key, value in record.items():
            cell = cells[key]
            if value is None:
                assert cell == ""
            elif isinstance(value, bool):
                assert cell == str(value).lower()
            elif isinstance(value, (int, float)):
                assert float(cell) == value, key  # full precision, not rounded
            else:
                assert cell == str(value)


def test_format_json_is_the_json_report(setup, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "r.json"
    result = _profile(setup, "--format", "json", "--json", out)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(out.read_text())


def test_two_writers_to_stdout_are_refused(setup) -> None:  # noqa: F811
    result = _profile(setup, "--format", "tsv", "--json", "-")
    assert result.exit_code == 2
    assert "both write to stdout" in result.stderr


def test_evaluate_tsv_and_json(setup, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "e.json"
    result = invoke_cli(
        "evaluate", setup["static"], "--data", setup["data"], "--repeats", "1", "--format",
        "tsv", "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    header, row = (line.split("\t") for line in result.stdout.splitlines())
    cells = dict(zip(header, row, strict=True))
    report = json.loads(out.read_text())
    for key in ("wer", "cer", "rtf", "rtf_min", "rtf_max", "rtfx", "words"):
        assert float(cells[key]) == report["result"][key]
    assert cells["policy"] == "static" and cells["run_source"] == "static model"


def test_evaluate_table_says_what_ran(setup) -> None:  # noqa: F811
    result = invoke_cli("evaluate", setup["static"], "--data", setup["data"], "--repeats", "1")
    assert result.exit_code == 0, result.output
    assert "ran: full depth (static model)" in result.stdout
    assert "…" not in result.stdout


def test_long_table_cells_are_not_cut_when_piped(tmp_path) -> None:
    from rich.table import Table

    from dyncli.cli import output

    table = Table()
    cells = [f"column-{i}-0.0012345678-0.0098765432" for i in range(12)]
    for i in range(12):
        table.add_column(f"a long header number {i}")
    table.add_row(*cells)
    with output.console.capture() as capture:
        output.print_table(table)
    text = capture.get()
    assert all(cell in text for cell in cells)
    assert all(f"a long header number {i}" in text for i in range(12))
