"""Transcribe audio with a file from `dyncli export`, using onnxruntime, numpy and soundfile only
(no dyncli, no torch): what a deployment runs.

    python examples/deploy/transcribe_onnx.py model.onnx a.wav b.wav ...
    python examples/deploy/transcribe_onnx.py model.onnx --manifest eval/manifest.jsonl

Prints one `path<TAB>transcript` line per file; with a manifest whose lines hold `text`, also
the WER over it (word edit distance / reference words) on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnxruntime as ort
import soundfile as sf


def load(path: str) -> tuple[ort.InferenceSession, dict[str, str]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session, dict(session.get_modelmeta().custom_metadata_map)


def transcribe(session: ort.InferenceSession, meta: dict[str, str], audio: str) -> str:
    wave, rate = sf.read(audio, dtype="float32", always_2d=True)
    if rate != int(meta["sample_rate"]):
        sys.exit(f"error: {audio}: {rate} Hz, the model takes {meta['sample_rate']} Hz")
    scores = session.run(None, {"wave": wave.mean(axis=1)[None, :]})[0][0]  # (T, V)
    tokens, blank = json.loads(meta["tokens"]), int(meta["blank_id"])
    best = scores.argmax(-1).tolist()  # greedy CTC: best id per frame, repeats collapsed
    ids = [k for j, k in enumerate(best) if k != blank and (j == 0 or best[j - 1] != k)]
    return " ".join("".join(tokens[k] for k in ids).split())


def edits(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("audio", nargs="*")
    parser.add_argument("--manifest", help="JSONL: audio_filepath (relative to it) and text")
    args = parser.parse_args()
    session, meta = load(args.model)
    if meta.get("decode") != "greedy-ctc":
        sys.exit(f"error: {args.model}: decoding {meta.get('decode')!r} is not greedy-ctc")
    items = [(a, None) for a in args.audio]
    if args.manifest:
        root = Path(args.manifest).parent
        for line in Path(args.manifest).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                items.append((str(root / row["audio_filepath"]), row.get("text")))
    errors = words = 0
    for audio, text in items:
        hyp = transcribe(session, meta, audio)
        print(f"{audio}\t{hyp}")
        if text is not None:
            errors += edits(text.split(), hyp.split())
            words += len(text.split())
    if words:
        print(f"WER {100 * errors / words:.2f}% ({errors} errors / {words} words)", file=sys.stderr)


if __name__ == "__main__":
    main()
