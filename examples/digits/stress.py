"""A stress copy of the dev set: every dev utterance speed-perturbed by 0.8 and by 1.25.

    python examples/digits/stress.py [--data examples/digits/work/data]

Writes DATA/dev-stress/ and DATA/dev-stress.jsonl. Pitch and tempo move together (resampling),
by factors fixed in advance just outside the training augmentation's 0.85-1.15, so the stress
set sounds like new voices made from the dev speakers' held-out takes. It exists to choose an
operating point that holds beyond the training speakers *without* looking at the test speaker:
on 200 dev words an exit threshold that changes one or two utterances cannot be judged, and a
voice the model has not heard is where a shallow exit fails first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import soundfile as sf

from dyncli.data.audio import load_audio, resample

HERE = Path(__file__).resolve().parent
FACTORS = (0.8, 1.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE / "work" / "data")
    args = ap.parse_args()
    out = args.data / "dev-stress"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for line in (args.data / "dev.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        rate = int(row.get("sample_rate", 8000))
        wave = load_audio(args.data / row["audio_filepath"], rate)
        for factor in FACTORS:
            # play `factor` times faster: read at rate * factor, resample to rate
            fast = resample(wave, int(rate * factor), rate)
            name = f"{Path(row['audio_filepath']).stem}-sp{factor}.wav"
            sf.write(out / name, fast.numpy(), rate)
            rows.append(
                {
                    "audio_filepath": f"dev-stress/{name}",
                    "text": row["text"],
                    "duration": len(fast) / rate,
                    "speaker": f"{row['speaker']}-sp{factor}",
                }
            )
    (args.data / "dev-stress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} utterances to {args.data / 'dev-stress.jsonl'}")


if __name__ == "__main__":
    main()
