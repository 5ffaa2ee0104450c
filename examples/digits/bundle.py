"""Copy the recipe's outputs into the package as the bundled demo assets.

    python examples/digits/bundle.py [--work examples/digits/work]

Writes dyncli/assets/demo_static.ckpt and demo_dynamic.ckpt (weights stored as float16) and
dyncli/assets/eval/ (the held-out test speaker's utterances, 8 kHz WAV, with a manifest and the
FSDD attribution).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from dyncli.checkpoint import load_checkpoint, save_checkpoint

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parents[1] / "dyncli" / "assets"

LICENSE_NOTE = """# Bundled evaluation set

Connected-digit utterances (2-7 digits with random pauses) built by `examples/digits/prepare.py`
from the recordings of ONE speaker ({speaker}) of the Free Spoken Digit Dataset (FSDD),
github.com/Jakobovski/free-spoken-digit-dataset (commit 26eb9aa). This speaker is held out of
training and dev entirely: the bundled model never heard them.

License: Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0),
https://creativecommons.org/licenses/by-sa/4.0/. These derived recordings are distributed under
the same license. Each manifest line lists the FSDD source files it was built from (`sources`).

{utterances} utterances, {seconds:.1f} s of audio, 8 kHz 16-bit mono WAV.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: WORK/static.ckpt")
    ap.add_argument(
        "--dynamic",
        type=Path,
        default=None,
        help="default: WORK/bundled.ckpt (run.sh step 7), else WORK/distilled.ckpt, else "
        "WORK/dynamic.ckpt",
    )
    ap.add_argument("--data", type=Path, default=None, help="default: WORK/data")
    args = ap.parse_args()
    data = args.data or args.work / "data"
    ckpt = load_checkpoint(args.checkpoint or args.work / "static.ckpt")
    ckpt.provenance = {**ckpt.provenance, "bundled_from": "examples/digits recipe"}
    save_checkpoint(ASSETS / "demo_static.ckpt", ckpt, half=True)
    default = next(
        (
            args.work / name
            for name in ("bundled.ckpt", "distilled.ckpt")
            if (args.work / name).is_file()
        ),
        args.work / "dynamic.ckpt",
    )
    dynamic = load_checkpoint(args.dynamic or default)
    dynamic.provenance = {**dynamic.provenance, "bundled_from": "examples/digits recipe"}
    save_checkpoint(ASSETS / "demo_dynamic.ckpt", dynamic, half=True)

    out = ASSETS / "eval"
    if out.exists():
        shutil.rmtree(out)
    (out / "audio").mkdir(parents=True)
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines() if line]
    lines = []
    for row in rows:
        src = data / row["audio_filepath"]
        name = Path(row["audio_filepath"]).name
        shutil.copy2(src, out / "audio" / name)
        lines.append(json.dumps({**row, "audio_filepath": f"audio/{name}"}))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    speaker = rows[0]["speaker"]
    (out / "README.md").write_text(
        LICENSE_NOTE.format(
            speaker=speaker, utterances=len(rows), seconds=sum(r["duration"] for r in rows)
        )
    )
    print(f"bundled {len(rows)} utterances of {speaker} and the model into {ASSETS}")


if __name__ == "__main__":
    main()
