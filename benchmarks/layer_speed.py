"""Time of one Conformer layer at the frame counts blank-skip leaves, per implementation.

At batch size 1 a layer on a few tens of frames costs mostly fixed per-op work, so how a layer
is dispatched decides how much of a FLOP saving reaches the wall clock. Three ways to run the
same maths, timed with ``torch.utils.benchmark`` in interleaved rounds (1 thread by default):

* ``module``: torchaudio's modules (``conformer_layer_reference``, in eval);
* ``lean``: the functional inference path on prepared weights, run op by op from Python
  (``DYNCLI_EAGER=1``);
* ``traced``: the same path as a per-layer TorchScript trace (the default under
  ``torch.inference_mode``).

    python benchmarks/layer_speed.py [--checkpoint CKPT] [--frames 16,74] [--threads 1]

16 and 74 frames are the mean kept and full encoder lengths of the bundled evaluation set at
the distilled model's operating point. Writes benchmarks/results/layer_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

from dyncli import assets
from dyncli.checkpoint import load_checkpoint
from dyncli.environment import describe
from dyncli.fileio import atomic_write_text
from dyncli.models.conformer import conformer_layer_reference

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=assets.DEMO_DYNAMIC)
    ap.add_argument("--frames", default="16,74")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "layer_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint).model.eval()
    layers = range(model.num_layers)

    def module(x: torch.Tensor) -> torch.Tensor:
        for i in layers:
            x = conformer_layer_reference(model.layers[i], x, None)  # type: ignore[arg-type]
        return x

    def run_layers(eager: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            os.environ["DYNCLI_EAGER"] = "1" if eager else "0"
            for i in layers:
                x = model.run_layer(i, x, None)
            return x

        return run

    ways = {"module": module, "lean": run_layers(True), "traced": run_layers(False)}
    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for frames in (int(f) for f in args.frames.split(",")):
            x = torch.randn(1, frames, model.head.in_features)
            ref = module(x)
            for fn in ways.values():
                torch.testing.assert_close(fn(x), ref, atol=1e-4, rtol=1e-4)  # and warms up
            times: dict[str, list[float]] = {name: [] for name in ways}
            for r in range(args.rounds):
                names = list(ways)[r % 3 :] + list(ways)[: r % 3]  # rotate the order
                for name in names:
                    timer = benchmark.Timer(
                        "fn(x)", globals={"fn": ways[name], "x": x}, num_threads=args.threads
                    )
                    times[name].append(timer.timeit(10).mean / model.num_layers)
            per_layer = {name: statistics.median(v) for name, v in times.items()}
            results[str(frames)] = {
                **{f"{name}_us_per_layer": round(1e6 * s, 1) for name, s in per_layer.items()},
                "traced_vs_module": round(
                    statistics.median(
                        [m / t for m, t in zip(times["module"], times["traced"], strict=True)]
                    ),
                    3,
                ),
                "lean_vs_module": round(
                    statistics.median(
                        [m / t for m, t in zip(times["module"], times["lean"], strict=True)]
                    ),
                    3,
                ),
            }
            print(frames, results[str(frames)], flush=True)
    os.environ.pop("DYNCLI_EAGER", None)
    report = {
        "what": "median seconds per layer (batch 1) over interleaved rounds; ratios are medians "
        "of per-round ratios",
        "checkpoint": str(args.checkpoint),
        "environment": {**describe("cpu"), "threads": args.threads},
        "frames": results,
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
