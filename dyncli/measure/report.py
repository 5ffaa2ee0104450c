"""The ``profile`` report: its schema version, the definitions it states, and the Pareto flags.

Field names are the JSON keys. Schema 2 (issue 18) adds intervals to every WER difference and
speedup and the gate's three-way verdict; CHANGELOG.md lists every key that changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 2
RTF_DEFINITION = (
    "processing seconds / audio seconds, end to end (log-mel features + subsampling + encoder "
    "+ greedy CTC decoding), audio in memory, batch size as in timing.batch_size; median over "
    "timed rounds (rtf_min, rtf_max: the extreme rounds)"
)
FLOP_UNIT = "fvcore FLOPs: one multiply-add counts as one FLOP"


@dataclass
class Row:
    """One timed configuration (full depth, or a policy at a threshold) of one model.

    Field names are the JSON keys of ``static`` and ``rows[]`` (schema 2); fractions, not
    percentages. ``*_low`` / ``*_high``: 95% intervals (None where there is none: one timed
    pair). ``dwer*``: against the row's own model at full depth; ``gate_*``: against what the
    gate judges against (full depth, or ``--baseline``); ``*_baseline*``: against
    ``--baseline`` (None without it).
    """

    policy: str
    threshold: float | None  # None: full depth
    # accuracy
    wer: float
    wer_low: float
    wer_high: float
    cer: float
    words: int
    dwer: float
    dwer_low: float
    dwer_high: float
    dwer_prob_improvement: float
    dwer_differing: int
    dwer_resolution: float
    gate_dwer: float
    gate_dwer_low: float
    gate_dwer_high: float
    # executed work
    flops_ratio: float
    encoder_flops_ratio: float
    predicted_encoder_speedup: float | None
    gflops_per_audio_second: float
    encoder_gflops_per_audio_second: float
    avg_layers: float
    skipped_frame_fraction: float
    # time
    rtf: float
    rtf_min: float
    rtf_max: float
    rtf_low: float | None
    rtf_high: float | None
    rtfx: float
    speedup: float
    speedup_low: float | None
    speedup_high: float | None
    cpu_speedup: float
    cpu_speedup_low: float | None
    cpu_speedup_high: float | None
    encoder_speedup: float | None  # None where an onnxruntime graph is one call (no encoder time)
    encoder_share: float | None
    timing_pairs: int
    timing_iqr_median: float | None
    timing_warning: str | None
    gate_speedup: float
    gate_speedup_low: float | None
    gate_speedup_high: float | None
    # labels
    pareto: bool = False
    stored_operating_point: bool = False
    model: str | None = None  # with --models / --baseline: which checkpoint
    baseline: bool = False  # the --baseline model's full depth
    dwer_baseline: float | None = None
    dwer_baseline_low: float | None = None
    dwer_baseline_high: float | None = None
    dwer_baseline_prob_improvement: float | None = None
    dwer_baseline_differing: int | None = None
    dwer_baseline_resolution: float | None = None
    speedup_baseline: float | None = None
    speedup_baseline_low: float | None = None
    speedup_baseline_high: float | None = None
    runtime: str = "torch"  # torch: dyncli eager; onnxruntime: the exported graph
    transcripts_differ_from_torch: int | None = None  # onnxruntime rows: utterances whose
    # transcript differs from dyncli eager's at the same configuration

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> Row:
        """A row from ``values``, ignoring private keys (``_errors``); a missing or unknown
        public key is a bug and raises ``TypeError``."""
        return cls(**{k: v for k, v in values.items() if not k.startswith("_")})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


ROW_KEYS = tuple(f.name for f in fields(Row))


@dataclass
class ProfileReport:
    model: dict[str, Any]
    data: dict[str, Any]
    environment: dict[str, Any]
    policy: dict[str, Any]
    static: Row
    rows: list[Row]
    gate: dict[str, Any]
    timing: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "data": self.data,
            "environment": self.environment,
            "policy": self.policy,
            "definitions": {
                "rtf": RTF_DEFINITION,
                "rtfx": "1 / rtf",
                "speedup": "sum of full-depth times / sum of the row's times over pairs timed "
                "back to back on the same utterance (batch); speedup_low and speedup_high: the "
                "95% paired bootstrap interval over pairs (percentile, 9999 resamples, seed 0)",
                "cpu_speedup": "the same for CPU time (time.process_time, all threads)",
                "encoder_speedup": "the same for encoder time only (layers, heads, compaction); "
                "no interval; null where either row runs in onnxruntime (the graph is one call, "
                "front end included, so it has no encoder time)",
                "runtime": "torch: dyncli's eager path; onnxruntime: the same configuration "
                "exported ('dyncli export', the policy inside the graph) and run by onnxruntime",
                "transcripts_differ_from_torch": "onnxruntime rows: utterances whose transcript "
                "differs from dyncli eager's at the same configuration (0: the same transcripts)",
                "rtf_low": "rtf_low and rtf_high: 95% bootstrap interval of sum(time) / "
                "sum(audio) over timed visits",
                "wer_low": "wer_low and wer_high: 95% bootstrap interval over utterances (BCa)",
                "gate_dwer": "WER minus the gate's reference (full depth, or --baseline), "
                "paired over utterances, with gate_dwer_low and gate_dwer_high",
                "gate_speedup": "the reference's time over the row's, paired, with "
                "gate_speedup_low and gate_speedup_high",
                "timing_iqr_median": "IQR / median of the row's round times (4 rounds or more); "
                "timing_warning above 10% and 25%, as torch.utils.benchmark warns",
                "flops": FLOP_UNIT,
                "flops_ratio": "executed FLOPs / static FLOPs (whole pipeline, front end "
                "included; greedy decoding is not counted)",
                "avg_layers": "encoder layers per frame, averaged over all frames",
                "skipped_frame_fraction": "frames that did not run the last encoder layer",
                "wer": "word error rate as a fraction (0.05 = 5%)",
                "dwer": "row WER minus its model's full-depth WER (fractions); dwer_low and "
                "dwer_high: the 95% paired bootstrap interval over utterances (BCa, 9999 "
                "resamples, seed 0); dwer_prob_improvement: share of resamples where the row "
                "makes fewer errors; dwer_differing: utterances whose error counts differ; "
                "dwer_resolution: the smallest difference the set tells from zero (interval "
                "half-width, at least one word)",
            },
            "timing": self.timing,
            "static": self.static.to_json(),
            "rows": [row.to_json() for row in self.rows],
            "gate": self.gate,
            "skipped": self.skipped,
            "seconds": self.seconds,
        }


def pareto_flags(rows: Sequence[dict[str, Any]]) -> list[bool]:
    """True for rows no other row beats on both WER and RTF (lower is better for both)."""
    flags = []
    for r in rows:
        dominated = any(
            o["wer"] <= r["wer"]
            and o["rtf"] <= r["rtf"]
            and (o["wer"] < r["wer"] or o["rtf"] < r["rtf"])
            for o in rows
            if o is not r
        )
        flags.append(not dominated)
    return flags
