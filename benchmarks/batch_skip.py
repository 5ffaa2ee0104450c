"""Blank-skip in padded batches: does the encoder speedup follow FLOPs better when batched?

At batch size 1 the layers after the trigger run on ~20 frames, where GEMMs are inefficient
and weight streaming is a fixed cost, so the measured encoder speedup trails the FLOP count
(`blank_skip.py`). A batch of B utterances runs those layers on B x (longest kept count) rows.
This times the encoder only (front end and subsampling are identical in both and excluded),
full depth vs blank-skip at the checkpoint's operating point, for several batch sizes, and
compares with the speedup predicted by fvcore FLOPs of the padded computation actually run.

    python benchmarks/batch_skip.py [--checkpoint CKPT] [--data MANIFEST] [--batch-sizes 1,4,16]

Writes benchmarks/results/batch_skip.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from dyncli import assets
from dyncli.checkpoint import load_checkpoint
from dyncli.data.dataset import load_utterances, pad_waves
from dyncli.data.manifest import read_manifest
from dyncli.dynamic import build_policy
from dyncli.dynamic.operating_point import stored_point
from dyncli.environment import describe
from dyncli.fileio import atomic_write_text
from dyncli.measure.flops import FlopTable
from dyncli.measure.timing import import_benchmark
from dyncli.methods.static import StaticPolicy

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=assets.DEMO_DYNAMIC)
    ap.add_argument("--data", type=Path, default=assets.EVAL_MANIFEST)
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "batch_skip.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    timer_cls = import_benchmark().Timer
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.model
    point = stored_point(ckpt.method)
    assert point is not None and point[0] == "blank-skip", "needs a stored blank-skip point"
    policy = build_policy(point[0], point[1], **point[2])
    static = StaticPolicy()
    k = int(point[2]["layer"])
    table = FlopTable(model)
    utts, _ = load_utterances(read_manifest(args.data), model.sample_rate, False)
    utts.sort(key=lambda u: u.samples)
    results = []
    for bs in [int(v) for v in args.batch_sizes.split(",")]:
        inputs = []
        flops = {"static": 0, "skip": 0}
        with torch.inference_mode():
            for i in range(0, len(utts), bs):
                wave, lens = pad_waves([u.wave for u in utts[i : i + bs]])
                x, n = model.embed(*model.features(wave, lens))
                inputs.append((x, n))
                b, t = x.shape[0], x.shape[1]
                kept = int(
                    (policy.encode(model, x, n).frame_layers == model.num_layers).sum(1).max()
                )
                layers = range(model.num_layers)
                flops["static"] += b * (sum(table.layer(j, t) for j in layers) + table.head(t))
                flops["skip"] += b * (
                    sum(table.layer(j, t) for j in range(k))
                    + table.exit_head(k, t)
                    + sum(table.layer(j, kept) for j in range(k, model.num_layers))
                    + table.head(kept)
                )

        def run(p: object, inputs: list = inputs) -> None:
            with torch.inference_mode():
                for x, n in inputs:
                    p.encode(model, x, n)  # type: ignore[attr-defined]

        times: dict[str, list[float]] = {"static": [], "skip": []}
        for r in range(args.repeats):
            order = [("static", static), ("skip", policy)]
            for name, p in order if r % 2 == 0 else order[::-1]:
                timer = timer_cls("run(p)", globals={"run": run, "p": p}, num_threads=args.threads)
                times[name].append(timer.timeit(1).median)
        measured = statistics.median(
            s / d for s, d in zip(times["static"], times["skip"], strict=True)
        )
        predicted = flops["static"] / flops["skip"]
        row = {
            "batch_size": bs,
            "batches": len(inputs),
            "encoder_seconds_static": statistics.median(times["static"]),
            "encoder_seconds_skip": statistics.median(times["skip"]),
            "measured_encoder_speedup": measured,
            "predicted_encoder_speedup_padded_flops": predicted,
            "fidelity": measured / predicted,
        }
        results.append(row)
        print(
            f"batch {bs:>3}: encoder {measured:.2f}x measured vs {predicted:.2f}x from the "
            f"padded FLOPs (fidelity {measured / predicted:.2f})"
        )
    out = {
        "checkpoint": str(args.checkpoint),
        "operating_point": dict(ckpt.method["operating_point"] or {}) if ckpt.method else None,
        "environment": describe(torch.device("cpu")),
        "rows": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
