"""Store a dynamic checkpoint's operating point, chosen on dev *and* on the dev stress copy.

    python examples/digits/choose_point.py CKPT -o OUT --policy early-exit-posterior \\
        --dev DATA/dev.jsonl --stress DATA/dev-stress.jsonl [--wer-budget 0.005]

The rule of ``--wer-budget`` (``dyncli.dynamic.operating_point.choose_operating_point``: the
threshold with the fewest executed FLOPs whose ΔWER upper bound, 95% paired bootstrap over
utterances against full depth, is within the budget), required on both sets: a threshold must
hold on the training speakers' held-out takes and on the same takes made to sound like new
voices (``stress.py``). The test speaker is never read. The point stores the dev figures as
``--wer-budget`` does, plus the stress set's (``stress_*``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dyncli.checkpoint import load_checkpoint, save_checkpoint
from dyncli.data.dataset import load_utterances
from dyncli.data.manifest import read_manifest
from dyncli.dynamic.operating_point import choose_operating_point

GRID = (0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--policy", default="early-exit-posterior")
    ap.add_argument("--dev", type=Path, required=True)
    ap.add_argument("--stress", type=Path, required=True)
    ap.add_argument("--wer-budget", type=float, default=0.005)
    ap.add_argument("--thresholds", default=",".join(map(str, GRID)))
    args = ap.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    grid = [float(v) for v in args.thresholds.split(",")]
    rate = ckpt.model.sample_rate
    choices = {}
    for name, path in (("dev", args.dev), ("stress", args.stress)):
        utts, _ = load_utterances(read_manifest(path), rate)
        choices[name] = choose_operating_point(
            ckpt, utts, policy=args.policy, wer_budget=args.wer_budget, thresholds=grid
        )
        for row in choices[name].rows:
            print(
                f"{name:6} {row['threshold']:>6g}: WER {100 * row['wer']:5.2f}%, dWER "
                f"{100 * row['dwer']:+.1f} [{100 * row['dwer_low']:+.1f}, "
                f"{100 * row['dwer_high']:+.1f}], FLOPs {row['flops_ratio']:.2f}"
            )
    ok = [
        {r["threshold"] for r in c.rows if r["dwer_high"] <= args.wer_budget + 1e-9}
        for c in choices.values()
    ]
    both = ok[0] & ok[1]
    if not both:
        print("no threshold keeps the budget on both sets: nothing stored")
        return 1
    dev_rows = {r["threshold"]: r for r in choices["dev"].rows}
    chosen = min(both, key=lambda t: (dev_rows[t]["flops_ratio"], dev_rows[t]["wer"]))
    utts, _ = load_utterances(read_manifest(args.dev), rate)
    point = choose_operating_point(
        ckpt, utts, policy=args.policy, wer_budget=args.wer_budget, thresholds=[chosen]
    ).point
    assert point is not None
    stress = next(r for r in choices["stress"].rows if r["threshold"] == chosen)
    point.update(
        {
            "stress_wer": stress["wer"],
            "stress_static_wer": choices["stress"].static["wer"],
            "stress_words": choices["stress"].static["words"],
            "stress_dwer": stress["dwer"],
            "stress_dwer_low": stress["dwer_low"],
            "stress_dwer_high": stress["dwer_high"],
            "stress_flops_ratio": stress["flops_ratio"],
            "chosen_on": f"{args.dev.name} and {args.stress.name} (dev speed-perturbed 0.8 and "
            "1.25): the fewest dev FLOPs whose dWER upper bound is within the budget on both",
        }
    )
    assert ckpt.method is not None
    ckpt.method["operating_point"] = point
    save_checkpoint(args.output, ckpt)
    print(f"stored {args.policy} @ {chosen:g} in {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
