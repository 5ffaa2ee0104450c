"""Build connected-digit utterances from the Free Spoken Digit Dataset (FSDD).

Each utterance joins 2-7 isolated digit recordings of ONE speaker with random pauses, and is
written as 16-bit 8 kHz WAV with a NeMo-style JSONL manifest. The test speaker is never heard
in training or dev. By default (``--dev-speaker none``) the other four speakers all train:

    train        training speakers, takes 0..39, sampled with replacement
    dev          training speakers, takes 40..44 (picks the best epoch)
    takes        training speakers, takes 45..49 (recordings never used in training or dev)
    test         the test speaker, every take once (the bundled evaluation set)

With ``--dev-speaker NAME`` that speaker is held out as dev (every take once) and
``takes`` keeps takes 40..49 of the remaining three training speakers.

Deterministic given --seed. FSDD is CC BY-SA 4.0 (github.com/Jakobovski/free-spoken-digit-dataset);
everything written here derives from it and carries the same license.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

WORDS = "zero one two three four five six seven eight nine".split()
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "yweweler")
RATE = 8000
HERE = Path(__file__).resolve().parent
DEFAULT_FSDD = HERE.parents[2] / "shared" / "data" / "fsdd"


def load_clips(fsdd: Path) -> dict[tuple[str, int], list[tuple[int, Path]]]:
    """(speaker, digit) -> [(take, path)], sorted by take."""
    clips: dict[tuple[str, int], list[tuple[int, Path]]] = defaultdict(list)
    for path in sorted((fsdd / "recordings").glob("*.wav")):
        digit, speaker, take = path.stem.split("_")
        clips[(speaker, int(digit))].append((int(take), path))
    if not clips:
        raise SystemExit(f"error: no FSDD recordings under {fsdd}/recordings")
    for key in clips:
        clips[key].sort()
    return clips


def read_clip(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="float32")
    if rate != RATE or data.ndim != 1:
        raise SystemExit(f"error: {path}: expected mono {RATE} Hz audio")
    return data


def compose(clips: list[Path], rng: random.Random) -> np.ndarray:
    """Join clips with 30-350 ms pauses, 50-300 ms lead/tail, and a faint noise floor."""
    parts = [np.zeros(int(rng.uniform(0.05, 0.3) * RATE), np.float32)]
    for i, path in enumerate(clips):
        if i:
            parts.append(np.zeros(int(rng.uniform(0.03, 0.35) * RATE), np.float32))
        parts.append(read_clip(path))
    parts.append(np.zeros(int(rng.uniform(0.05, 0.3) * RATE), np.float32))
    wave = np.concatenate(parts)
    nprng = np.random.default_rng(rng.randrange(2**32))
    wave = wave + nprng.normal(0.0, 10 ** (rng.uniform(-66, -54) / 20), wave.shape)
    peak = float(np.abs(wave).max())
    return (wave * (0.9 / peak if peak > 0.9 else 1.0)).astype(np.float32)


def group(pool: list[tuple[int, Path]], rng: random.Random) -> list[list[tuple[int, Path]]]:
    """Partition a shuffled pool into groups of 2-7 clips, using every clip once."""
    pool = pool[:]
    rng.shuffle(pool)
    groups, i = [], 0
    while i < len(pool):
        n = rng.randint(2, 7)
        if len(pool) - (i + n) == 1:  # never leave a single clip behind
            n += 1
        groups.append(pool[i : i + n])
        i += n
    return groups


def write_split(
    name: str, groups: list[list[tuple[int, Path]]], out: Path, rng: random.Random
) -> int:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, grp in enumerate(groups):
        paths = [p for _, p in grp]
        wave = compose(paths, rng)
        speaker = paths[0].stem.split("_")[1]
        uid = f"{name}-{speaker}-{k:05d}"
        sf.write(str(folder / f"{uid}.wav"), wave, RATE, subtype="PCM_16")
        text = " ".join(WORDS[int(p.stem.split("_")[0])] for p in paths)
        lines.append(
            json.dumps(
                {
                    "audio_filepath": f"{name}/{uid}.wav",
                    "text": text,
                    "duration": round(len(wave) / RATE, 4),
                    "speaker": speaker,
                    "sources": [p.name for p in paths],
                }
            )
        )
    (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fsdd", type=Path, default=DEFAULT_FSDD)
    ap.add_argument("--out", type=Path, default=HERE / "work" / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-speaker", default="george", choices=SPEAKERS)
    ap.add_argument(
        "--dev-speaker",
        default="none",
        choices=(*SPEAKERS, "none"),
        help="'none': train on every speaker but the test one; dev = their takes 40-44, "
        "and the 'takes' split keeps 45-49",
    )
    ap.add_argument("--train-utterances", type=int, default=4000)
    ap.add_argument("--first-heldout-take", type=int, default=40)
    args = ap.parse_args()
    if args.dev_speaker == args.test_speaker:
        raise SystemExit("error: --dev-speaker must differ from --test-speaker")

    clips = load_clips(args.fsdd)
    train_speakers = [s for s in SPEAKERS if s not in (args.test_speaker, args.dev_speaker)]
    rng = random.Random(args.seed)
    cut = args.first_heldout_take

    def pool(speakers: list[str], takes: range) -> list[tuple[int, Path]]:
        return [c for s in speakers for d in range(10) for c in clips[(s, d)] if c[0] in takes]

    counts = {}
    # Training: random 2-7 digit sequences of one training speaker, clips drawn with replacement.
    train_groups = []
    by_speaker = {s: pool([s], range(0, cut)) for s in train_speakers}
    for _ in range(args.train_utterances):
        spk = rng.choice(train_speakers)
        train_groups.append(rng.choices(by_speaker[spk], k=rng.randint(2, 7)))
    counts["train"] = write_split("train", train_groups, args.out, rng)
    if args.dev_speaker == "none":
        # No dev speaker: dev = takes cut..cut+4 of the training speakers, takes = the rest.
        dev_groups = [g for s in train_speakers for g in group(pool([s], range(cut, cut + 5)), rng)]
        takes = range(cut + 5, 10**6)
    else:
        dev_groups = group(pool([args.dev_speaker], range(10**6)), rng)
        takes = range(cut, 10**6)
    takes_groups = [g for s in train_speakers for g in group(pool([s], takes), rng)]
    counts["takes"] = write_split("takes", takes_groups, args.out, rng)
    counts["dev"] = write_split("dev", dev_groups, args.out, rng)
    counts["test"] = write_split(
        "test", group(pool([args.test_speaker], range(10**6)), rng), args.out, rng
    )
    (args.out / "README.md").write_text(
        "Connected-digit utterances derived from the Free Spoken Digit Dataset (FSDD),\n"
        "github.com/Jakobovski/free-spoken-digit-dataset, licensed CC BY-SA 4.0; these derived\n"
        "files are distributed under the same license.\n\n"
        f"test speaker: {args.test_speaker}; dev speaker: {args.dev_speaker}; "
        f"training speakers: {', '.join(train_speakers)}; seed {args.seed}.\n",
        encoding="utf-8",
    )
    print(
        json.dumps(
            {
                "out": str(args.out),
                "utterances": counts,
                "train_speakers": train_speakers,
                "dev_speaker": args.dev_speaker,
                "test_speaker": args.test_speaker,
            }
        )
    )


if __name__ == "__main__":
    main()
