"""onnxruntime against dyncli eager on the bundled model and evaluation set, 1 thread, batch 1:
what ``dyncli profile --runtime onnxruntime`` measures, at the stored operating point and at a
blank-skip threshold chosen on dev.

    python benchmarks/onnx_speed.py --dev DEV.jsonl [--wer-budget 0.025] [--repeats 3]
        [--checkpoint CKPT --out results/NAME.json]

1. Stored point: ``profile --runtime onnxruntime --thresholds <stored>`` on the bundled set.
2. Blank-skip: the threshold is chosen on ``--dev`` (never on the test speaker): the one with the
   fewest executed FLOPs whose dev WER increase has a 95% upper bound within ``--wer-budget``
   (the rule ``convert --wer-budget`` uses); if none is, the one with the smallest upper bound,
   flagged. Then ``profile --runtime onnxruntime --policy blank-skip --thresholds <chosen>`` on
   the bundled set, once.

Each profile times onnxruntime full depth, onnxruntime at the point, dyncli eager full depth and
dyncli eager at the point back to back per utterance (ABBA), so every ratio is paired within one
run. Writes ``results/onnx_speed.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dyncli.assets import DEMO_DYNAMIC, EVAL_MANIFEST
from dyncli.checkpoint import load_checkpoint
from dyncli.dynamic.operating_point import stored_point
from dyncli.measure.profile import profile

RESULTS = Path(__file__).parent / "results" / "onnx_speed.json"
GRID = [0.9, 0.95, 0.98, 0.99, 0.995, 0.999]


def choose_on_dev(checkpoint: str, dev: str, budget: float) -> dict[str, Any]:
    report = profile(
        checkpoint=checkpoint, data=dev, policy="blank-skip", thresholds=GRID, repeats=1
    ).to_json()
    rows = report["rows"]
    within = [r for r in rows if r["dwer_high"] <= budget]
    pick = (
        min(within, key=lambda r: r["flops_ratio"])
        if within
        else min(rows, key=lambda r: r["dwer_high"])
    )
    return {
        "dev": dev,
        "wer_budget": budget,
        "grid": GRID,
        "threshold": pick["threshold"],
        "within_budget": bool(within),
        "dev_rows": [
            {k: r[k] for k in ("threshold", "wer", "dwer", "dwer_high", "flops_ratio")}
            for r in rows
        ],
    }


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The paired ratios of one ``--runtime onnxruntime`` profile (reference: onnxruntime full
    depth): rows are onnxruntime's points, then dyncli eager's full depth and points."""
    ort = [r for r in report["rows"] if r["runtime"] == "onnxruntime"]
    eager_full = next(
        r for r in report["rows"] if r["runtime"] == "torch" and r["threshold"] is None
    )
    eager = [r for r in report["rows"] if r["runtime"] == "torch" and r["threshold"] is not None]

    def ratio(r: dict[str, Any]) -> list[float]:
        return [r["speedup"], r["speedup_low"], r["speedup_high"]]

    # eager full depth's speedup against onnxruntime full depth is < 1 when onnxruntime is faster
    inv = ratio(eager_full)
    return {
        "ort_full_vs_eager_full": [1 / inv[0], 1 / inv[2], 1 / inv[1]],
        "points": [
            {
                "policy": o["policy"],
                "threshold": o["threshold"],
                "ort_vs_ort_full": ratio(o),
                "eager_vs_ort_full": ratio(e),
                "eager_vs_eager_full": [
                    e["speedup"] / eager_full["speedup"],
                    None,
                    None,
                ],
                "wer_ort": o["wer"],
                "wer_eager": e["wer"],
                "transcripts_differ_from_torch": o["transcripts_differ_from_torch"],
                "avg_layers": o["avg_layers"],
                "skipped_frame_fraction": o["skipped_frame_fraction"],
                "flops_ratio": o["flops_ratio"],
            }
            for o, e in zip(ort, eager, strict=True)
        ],
        "wer_full_ort": report["static"]["wer"],
        "wer_full_eager": eager_full["wer"],
        "pairs": report["timing"]["pairs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dev", required=True, help="dev manifest (not the test speaker)")
    parser.add_argument("--wer-budget", type=float, default=0.025)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", default=str(DEMO_DYNAMIC))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    point = stored_point(load_checkpoint(args.checkpoint).method)
    assert point is not None
    common: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "data": EVAL_MANIFEST,
        "runtime": "onnxruntime",
        "repeats": args.repeats,
    }
    stored = profile(thresholds=[point[1]], **common).to_json()
    chosen = choose_on_dev(args.checkpoint, args.dev, args.wer_budget)
    blank = profile(policy="blank-skip", thresholds=[chosen["threshold"]], **common).to_json()
    out = {
        "checkpoint": args.checkpoint,
        "what": "dyncli profile --runtime onnxruntime, bundled model and evaluation set, 1 "
        "thread, batch 1; ratios [value, low, high] paired within one run (95% intervals)",
        "stored_point": {"policy": point[0], "threshold": point[1], **summary(stored)},
        "blank_skip": {"chosen_on_dev": chosen, **summary(blank)},
        "environment": stored["environment"],
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for name in ("stored_point", "blank_skip"):
        s = out[name]
        full = s["ort_full_vs_eager_full"]
        print(
            f"{name}: onnxruntime full vs eager full {full[0]:.2f}x [{full[1]:.2f}, {full[2]:.2f}]"
        )
        for p in s["points"]:
            r = p["ort_vs_ort_full"]
            print(
                f"  {p['policy']} @ {p['threshold']:g}: onnxruntime {r[0]:.2f}x [{r[1]:.2f}, "
                f"{r[2]:.2f}] over its full depth; WER {100 * p['wer_ort']:.2f}% (eager "
                f"{100 * p['wer_eager']:.2f}%), transcripts differing "
                f"{p['transcripts_differ_from_torch']}"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
