"""Training-engine throughput: utterance-seconds of audio trained per wall-clock second.

Two jobs through the public Python API, one process, threads set explicitly:

* ``train``: one epoch of the demo Conformer from scratch (plain CTC, augmentation on);
* ``convert``: one epoch of skip-aware early-exit fine-tuning of the bundled static model
  (exits 3, 6, 9; blank-skip in the loop at layer 3 on half the steps);
* ``distill`` (engine only): one epoch of ``factorized-kd`` into the bundled dynamic model with
  the bundled static model as teacher (its forward pass runs every step: the input is augmented).

Each runs on the first ``--utterances`` utterances of a training manifest (the digits recipe's,
``examples/digits/run.sh`` step 1). The clock runs from the first training step to the last
(data loading and dev scoring are outside it), so the figure is the engine's: batching,
augmentation, forward, backward and optimizer.

    python benchmarks/train_throughput.py --train WORK/data/train.jsonl --dev WORK/data/dev.jsonl \
        [--utterances 600] [--threads 2] [--label before]

Appends one JSON record per job to ``benchmarks/results/train_throughput.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dyncli import assets
from dyncli.environment import describe

HERE = Path(__file__).resolve().parent


class Clock:
    """A reporter that notes when the first and the last training step ended."""

    def __init__(self) -> None:
        self.begin = 0.0
        self.last = 0.0
        self.steps = 0

    def start(self, total_steps: int) -> None:
        self.begin = time.perf_counter()

    def step(self, step: int, loss: float, lr: float) -> None:
        self.last = time.perf_counter()
        self.steps = step

    def epoch(self, summary: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass


def subset(manifest: Path, n: int, out: Path) -> float:
    """Write the first ``n`` lines of a JSON-lines manifest (paths made absolute); return the
    audio seconds they hold."""
    lines = manifest.read_text().splitlines()[:n]
    seconds = 0.0
    with out.open("w") as fh:
        for line in lines:
            item = json.loads(line)
            item["audio_filepath"] = str((manifest.parent / item["audio_filepath"]).resolve())
            seconds += float(item["duration"])
            fh.write(json.dumps(item) + "\n")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--dev", type=Path, required=True)
    ap.add_argument("--utterances", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", default="train,convert")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train_throughput.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dyncli.recipes.convert import convert, convert_defaults
    from dyncli.recipes.train import train
    from dyncli.registry.manager import get_backbone
    from dyncli.training import ExitTraining, TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        manifest = tmpdir / "train.jsonl"
        dev = tmpdir / "dev.jsonl"
        audio = subset(args.train, args.utterances, manifest)
        subset(args.dev, 10, dev)
        for job in args.jobs.split(","):
            clock = Clock()
            if job == "train":
                train(
                    train_manifest=manifest,
                    dev_manifest=dev,
                    output=tmpdir / "static.ckpt",
                    model_config=get_backbone("conformer").presets["demo"],
                    config=TrainConfig(epochs=1, device="cpu"),
                    reporter=clock,
                )
            elif job == "convert":
                cfg = convert_defaults()
                cfg.epochs, cfg.device = 1, "cpu"
                convert(
                    checkpoint=assets.DEMO_STATIC,
                    output=tmpdir / "dynamic.ckpt",
                    train_manifest=manifest,
                    dev_manifest=dev,
                    exits=ExitTraining(exits=[3, 6, 9], skip_layer=3),
                    config=cfg,
                    reporter=clock,
                )
            elif job == "distill":
                from dyncli.recipes.distill import DistillOptions, distill, distill_defaults

                cfg = distill_defaults()
                cfg.epochs, cfg.device = 1, "cpu"
                distill(
                    checkpoint=assets.DEMO_DYNAMIC,
                    output=tmpdir / "distilled.ckpt",
                    train_manifest=manifest,
                    dev_manifest=dev,
                    options=DistillOptions(method="factorized-kd"),
                    teacher=assets.DEMO_STATIC,
                    config=cfg,
                    reporter=clock,
                )
            else:
                raise SystemExit(f"unknown job {job!r}")
            seconds = clock.last - clock.begin
            record = {
                "label": args.label,
                "job": job,
                "utterances": args.utterances,
                "audio_seconds": round(audio, 1),
                "steps": clock.steps,
                "wall_seconds": round(seconds, 2),
                "utt_seconds_per_second": round(audio / seconds, 2),
                "threads": args.threads,
                "environment": describe("cpu"),
            }
            print(json.dumps({k: v for k, v in record.items() if k != "environment"}))
            with args.out.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
