"""onnxruntime against dyncli eager on the bundled evaluation set, batch 1, paired timings.

    python benchmarks/onnx_speed.py [--checkpoint CKPT] [--threads 1] [--rounds 3]

Exports the checkpoint twice (full depth, and its stored operating point, with the policy
inside the graph) into a temporary folder, then times four configurations on every utterance,
back to back, in a random order reversed from one round to the next: dyncli eager full depth,
dyncli eager at the stored point, onnxruntime full depth, onnxruntime at the stored point. Each
speedup is a ratio of summed times with its 95% paired bootstrap interval over (utterance,
round) pairs (``dyncli.measure.stats.paired_speedup``). Writes ``results/onnx_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from dyncli.assets import DEMO_DYNAMIC, EVAL_MANIFEST
from dyncli.checkpoint import load_checkpoint
from dyncli.data.audio import load_audio
from dyncli.dynamic.operating_point import resolve_run
from dyncli.environment import describe
from dyncli.export.onnx import export_onnx
from dyncli.measure.stats import paired_speedup

RESULTS = Path(__file__).parent / "results" / "onnx_speed.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=str(DEMO_DYNAMIC))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.model.eval()
    policy, choice = resolve_run(ckpt)
    rows = [json.loads(x) for x in EVAL_MANIFEST.read_text().splitlines() if x.strip()]
    waves = [
        load_audio(EVAL_MANIFEST.parent / r["audio_filepath"], model.sample_rate)[None]
        for r in rows
    ]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        full_path, point_path = Path(tmp) / "full.onnx", Path(tmp) / "point.onnx"
        export_onnx(ckpt, full_path)
        export_onnx(
            ckpt, point_path, policy=policy, policy_name=choice.policy, threshold=choice.threshold
        )
        sessions = {
            name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
            for name, p in (("ort_full", full_path), ("ort_point", point_path))
        }

    def eager(run_policy: bool, wave: torch.Tensor) -> None:
        with torch.inference_mode():
            feats, frames = model.features(wave, torch.tensor([wave.shape[1]]))
            x, lengths = model.embed(feats, frames)
            if run_policy:
                policy.encode(model, x, lengths)
            else:
                model.log_probs(model.run_layers(x, None))

    configs = {
        "eager_full": lambda w: eager(False, w),
        "eager_point": lambda w: eager(True, w),
        "ort_full": lambda w: sessions["ort_full"].run(None, {"wave": w.numpy()}),
        "ort_point": lambda w: sessions["ort_point"].run(None, {"wave": w.numpy()}),
    }
    for fn in configs.values():  # warm-up, untimed
        for w in waves[:5]:
            fn(w)
    times: dict[str, list[float]] = {k: [] for k in configs}
    rng = random.Random(0)
    for r in range(args.rounds):
        for i, w in enumerate(waves):
            order = list(configs)
            rng.shuffle(order)
            if (r + i) % 2:
                order.reverse()
            for name in order:
                start = time.perf_counter()
                configs[name](w)
                times[name].append(time.perf_counter() - start)

    def ratio(base: str, other: str) -> dict[str, float]:
        iv = paired_speedup(times[base], times[other])
        return {"speedup": iv.value, "low": iv.low, "high": iv.high}

    report = {
        "what": "batch 1, paired per utterance and round, random order reversed each round",
        "checkpoint": args.checkpoint,
        "operating_point": choice.describe(),
        "threads": args.threads,
        "rounds": args.rounds,
        "utterances": len(waves),
        "pairs": len(times["eager_full"]),
        "seconds": {k: float(np.sum(v)) for k, v in times.items()},
        "ort_full_vs_eager_full": ratio("eager_full", "ort_full"),
        "ort_point_vs_ort_full": ratio("ort_full", "ort_point"),
        "eager_point_vs_eager_full": ratio("eager_full", "eager_point"),
        "ort_point_vs_eager_point": ratio("eager_point", "ort_point"),
        "environment": describe(torch.device("cpu")),
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for key, value in report.items():
        if key.endswith(("_full", "_point")) and isinstance(value, dict):
            print(f"{key}: {value['speedup']:.2f}x [{value['low']:.2f}, {value['high']:.2f}]")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
