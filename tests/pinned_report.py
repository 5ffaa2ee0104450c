"""The part of a ``dyncli profile --format json`` report that must not change across a refactor.

Shared by ``tests/test_pinned_profile.py`` (which compares a fresh run with the stored files) and
``tests/data/pinned/make_pinned.py`` (which writes them), so both select the same fields.

Kept: everything computed from the model, the data and the seeded bootstraps: WER/CER and their
intervals, word counts, the WER differences against full depth with their intervals
(``dwer*``, ``gate_dwer*``; the bootstrap is seeded), executed FLOPs, average depth, the skipped
fraction, the swept thresholds, the stored operating point and which row it is, and the gate's
verdict with no bars given.

Left out, because they are timing- or machine-dependent: every RTF, speedup and CPU-time figure,
``encoder_share`` (a share of time), ``timing_pairs``, ``timing_iqr_median``,
``timing_warning``, ``pareto`` (WER against *RTF*), the whole ``timing`` block, ``environment``,
``seconds``, and ``gate.operating_point`` (with no bars it is the row with the lowest RTF). Also
left out: absolute paths (only file names are kept) and ``definitions`` (fixed wording, not a
measurement).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The bundled models and the arguments each is profiled with; the static checkpoint has no
# exits, so it runs the one policy it can (drop), as `profile` itself suggests.
MODELS: dict[str, list[str]] = {
    "demo_dynamic": [],
    "demo_static": ["--policy", "drop"],
}
COMMON_ARGS = ["--format", "json", "--repeats", "1", "--threads", "1", "--device", "cpu"]

ROW_KEYS = (
    "model",
    "policy",
    "threshold",
    "baseline",
    "stored_operating_point",
    # accuracy (seeded bootstraps: deterministic)
    "wer",
    "wer_low",
    "wer_high",
    "cer",
    "words",
    "dwer",
    "dwer_low",
    "dwer_high",
    "dwer_prob_improvement",
    "dwer_differing",
    "dwer_resolution",
    "gate_dwer",
    "gate_dwer_low",
    "gate_dwer_high",
    "dwer_baseline",
    "dwer_baseline_low",
    "dwer_baseline_high",
    "dwer_baseline_prob_improvement",
    "dwer_baseline_differing",
    "dwer_baseline_resolution",
    # executed work (predicted_encoder_speedup is a FLOP ratio, not a timing)
    "flops_ratio",
    "encoder_flops_ratio",
    "predicted_encoder_speedup",
    "gflops_per_audio_second",
    "encoder_gflops_per_audio_second",
    "avg_layers",
    "skipped_frame_fraction",
)
MODEL_KEYS = ("sha256", "backbone", "layers", "method", "exits", "operating_point")
DATA_KEYS = ("utterances", "audio_seconds")
# With no bars the gate's verdict, reference and selection rule are fixed; its operating point
# (the fastest row) is not.
GATE_KEYS = ("verdict", "passed", "exit_code", "reference", "bars", "selection")


def _name(path: Any) -> Any:
    """A file name without its folders (None stays None)."""
    return Path(path).name if isinstance(path, str) else path


def _pick(source: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``keys`` of ``source`` that it has: a key the report lost shows up in the comparison."""
    return {k: source[k] for k in keys if k in source}


def _row(row: dict[str, Any]) -> dict[str, Any]:
    picked = _pick(row, ROW_KEYS)
    if "model" in picked:
        picked["model"] = _name(picked["model"])
    return picked


def row_label(row: dict[str, Any]) -> str:
    """How a pinned row is named in a failure message: ``[model:]policy@threshold``."""
    label = "static" if row.get("threshold") is None else f"{row['policy']}@{row['threshold']:g}"
    return f"{row['model']}:{label}" if row.get("model") else label


def pinned_fields(report: dict[str, Any]) -> dict[str, Any]:
    """The non-timing, machine-independent fields of a ``profile`` JSON report."""
    return {
        "schema_version": report.get("schema_version"),
        "model": {"name": _name(report["model"].get("path")), **_pick(report["model"], MODEL_KEYS)},
        "data": {"name": _name(report["data"].get("path")), **_pick(report["data"], DATA_KEYS)},
        "policy": report.get("policy"),
        "gate": _pick(report.get("gate") or {}, GATE_KEYS),
        "skipped": report.get("skipped"),
        "static": _row(report["static"]),
        "rows": [_row(row) for row in report["rows"]],
    }
