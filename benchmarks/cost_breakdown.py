"""Where the time goes: front end, subsampling, encoder layers, head + decoding (Amdahl check).

Dynamic depth can only save encoder-layer time; feature extraction, the convolutional
subsampling and decoding always run. This measures each part's share of end-to-end time on the
bundled evaluation set (batch size 1, threads set explicitly), with torch.utils.benchmark.

    python benchmarks/cost_breakdown.py [--checkpoint CKPT] [--data MANIFEST] [--threads 1]

Writes benchmarks/results/cost_breakdown.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dyncli import assets
from dyncli.checkpoint import load_checkpoint
from dyncli.data.dataset import load_utterances
from dyncli.data.manifest import read_manifest
from dyncli.decoding import greedy_ctc
from dyncli.environment import describe
from dyncli.measure.timing import import_benchmark

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=assets.DEMO_STATIC)
    ap.add_argument("--data", type=Path, default=assets.EVAL_MANIFEST)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cost_breakdown.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    benchmark = import_benchmark()
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.model.eval()
    utts, _ = load_utterances(read_manifest(args.data), model.sample_rate)
    audio_s = sum(u.samples for u in utts) / model.sample_rate

    with torch.inference_mode():
        inputs = [(u.wave[None], torch.tensor([u.samples])) for u in utts]
        feats = [model.features(w, n) for w, n in inputs]
        embedded = [model.embed(f, n) for f, n in feats]
        encoded = []
        for x, n in embedded:
            for i in range(model.num_layers):
                x = model.run_layer(i, x, None)
            encoded.append((x, n))

    def front() -> None:
        for w, n in inputs:
            model.features(w, n)

    def subsample() -> None:
        for f, n in feats:
            model.embed(f, n)

    def layers() -> None:
        for x, _ in embedded:
            for i in range(model.num_layers):
                x = model.run_layer(i, x, None)

    def head_decode() -> None:
        for x, n in encoded:
            greedy_ctc(model.log_probs(x), n)

    def end_to_end() -> None:
        for w, n in inputs:
            lp, lens = model(w, n)
            greedy_ctc(lp, lens)

    parts = {
        "front_end": front,
        "subsampling": subsample,
        "encoder_layers": layers,
        "head_and_decoding": head_decode,
        "end_to_end": end_to_end,
    }
    seconds = {}
    with torch.inference_mode():
        for name, fn in parts.items():
            fn()  # warm-up
            timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=args.threads)
            seconds[name] = sorted(timer.timeit(1).median for _ in range(args.repeats))[
                args.repeats // 2
            ]
    total = seconds["end_to_end"]
    result = {
        "what": "median seconds over the whole set, batch size 1, and share of end-to-end time",
        "checkpoint": str(args.checkpoint),
        "data": {"path": str(args.data), "utterances": len(utts), "audio_seconds": audio_s},
        "environment": describe("cpu"),
        "seconds": seconds,
        "share_of_end_to_end": {k: v / total for k, v in seconds.items() if k != "end_to_end"},
        "rtf_end_to_end": total / audio_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in seconds.items():
        print(f"{k:18s} {v:8.3f} s  {100 * v / total:5.1f}%")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
