"""Manifests: what audio to read and what it says.

Four formats are read, detected from the path:

* NeMo-style JSON lines (``.jsonl`` / ``.json``): ``{"audio_filepath": ..., "text": ...,
  "duration": ...}`` per line; ``duration`` is optional; relative paths resolve against the
  manifest's folder.
* TSV (``.tsv``): ``path<TAB>text`` per line (an optional ``path<TAB>text`` header is skipped).
* Kaldi data directory: ``wav.scp`` (``utt-id path``) and ``text`` (``utt-id transcript``).
  Only plain paths: a piped command in ``wav.scp`` is refused, never executed.
* LibriSpeech-style folder: ``*.trans.txt`` files (``UTT-ID transcript``) beside ``UTT-ID.flac``
  or ``UTT-ID.wav``.

A bad entry raises :class:`InputError` naming the file and 1-based line, unless ``skip_bad`` is
set: then it is skipped and described in :attr:`Manifest.skipped`. Bad means anything that would
otherwise be read as something it is not: missing audio, an empty transcript, a line that is not
UTF-8 or not valid JSON, a JSON ``text`` or ``audio_filepath`` that is not a string (``null``
would be scored as "None"), a duplicated JSON key, a ``duration`` that is not a finite number
>= 0, a TSV line with other than two columns, an utterance id given twice (both lines are bad:
which one is right is unknown), one audio file listed with two different transcripts (likewise),
and a Kaldi id in ``text`` or ``wav.scp`` but not in the other.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyncli.data.text import normalize_text
from dyncli.errors import InputError

AUDIO_SUFFIXES = (".flac", ".wav")


@dataclass(frozen=True)
class Item:
    """One utterance: where its audio is, what it says, and where that was written down."""

    audio: Path
    text: str
    duration: float | None = None
    origin: str = ""  # "manifest.jsonl:12", for error messages


@dataclass
class Manifest:
    path: Path
    format: str
    items: list[Item]
    skipped: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 over (audio file name, size, normalised text) of every item, in order."""
        h = hashlib.sha256()
        for it in self.items:
            size = it.audio.stat().st_size if it.audio.exists() else -1
            h.update(f"{it.audio.name}\t{size}\t{normalize_text(it.text)}\n".encode())
        return h.hexdigest()


class _Reader:
    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.skipped: list[str] = []

    def bad(self, message: str) -> None:
        if not self.skip_bad:
            raise InputError(f"{message} (use --skip-bad to skip such entries)")
        self.skipped.append(message)

    def item(self, audio: Path, text: str, duration: float | None, origin: str) -> Item | None:
        if not normalize_text(text):
            self.bad(f"{origin}: empty transcript")
            return None
        if not audio.is_file():
            why = "not a regular file" if audio.exists() else "audio file not found"
            self.bad(f"{origin}: {why}: {audio}")
            return None
        return Item(audio=audio, text=text, duration=duration, origin=origin)


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "wav.scp").is_file():
            return "kaldi"
        if next(path.rglob("*.trans.txt"), None) is not None:
            return "librispeech"
        raise InputError(
            f"{path}: a directory must be a Kaldi data dir (wav.scp + text) "
            "or a LibriSpeech-style folder (*.trans.txt + audio)"
        )
    if path.exists() and not path.is_file():
        raise InputError(f"{path}: not a regular file, so not a manifest (give a file path)")
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    raise InputError(
        f"{path}: unknown manifest format; use .jsonl (NeMo), .tsv (path<TAB>text), "
        "a Kaldi data dir or a LibriSpeech-style folder"
    )


def read_manifest(path: str | Path, skip_bad: bool = False) -> Manifest:
    """Read a manifest in any supported format (see the module docstring)."""
    p = Path(path)
    fmt = detect_format(p)
    reader = _Reader(skip_bad)
    parse = {"jsonl": _read_jsonl, "tsv": _read_tsv, "kaldi": _read_kaldi, "librispeech": _read_ls}
    items = _drop_conflicts([it for it in parse[fmt](p, reader) if it is not None], reader)
    if not items:
        raise InputError(f"{p}: the manifest has no usable utterances")
    return Manifest(path=p, format=fmt, items=items, skipped=reader.skipped)


def _drop_conflicts(items: list[Item], reader: _Reader) -> list[Item]:
    """``items`` less those whose audio file (symlinks resolved) is listed again with another
    transcript: which one is right is unknown, so no line of that audio is used. The same audio
    with the same transcript twice is kept (a training manifest may repeat an utterance)."""
    first: dict[Path, Item] = {}
    bad: set[Path] = set()
    for it in items:
        key = it.audio.resolve()
        seen = first.setdefault(key, it)
        if seen is not it and normalize_text(seen.text) != normalize_text(it.text):
            bad.add(key)
            reader.bad(
                f"{it.origin}: audio {it.audio} is also at {seen.origin} with another "
                "transcript (ambiguous: no line of it is used)"
            )
    return [it for it in items if it.audio.resolve() not in bad] if bad else items


def _lines(path: Path, reader: _Reader) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line) for the non-blank lines of a text file.

    A UTF-8 byte-order mark at the start of the file is dropped."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            reader.bad(f"{path}:{number}: line is not valid UTF-8")
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        if text.strip():
            yield number, text.rstrip("\r")


def _resolve(base: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else base / p


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a JSON object whose keys are unique (json keeps the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_kind(value: object) -> str:
    """How JSON spells the type of ``value``: null, boolean, number, array, object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "string"


def _check_entry(entry: object) -> str | None:
    """What is wrong with one decoded JSONL line, or None."""
    if not isinstance(entry, dict):
        return f"expected a JSON object per line, got a JSON {_json_kind(entry)}"
    missing = [k for k in ("audio_filepath", "text") if k not in entry]
    if missing:
        return f"each line needs 'audio_filepath' and 'text' (missing: {', '.join(missing)})"
    for key in ("audio_filepath", "text"):
        if not isinstance(entry[key], str):
            return f"{key!r} must be a string, got a JSON {_json_kind(entry[key])}"
    duration = entry.get("duration")
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not math.isfinite(duration)
        or duration < 0
    ):
        return f"'duration' must be a number of seconds >= 0, got {json.dumps(duration)}"
    return None


def _read_jsonl(path: Path, reader: _Reader) -> Iterator[Item | None]:
    for number, line in _lines(path, reader):
        origin = f"{path}:{number}"
        try:
            entry = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            reader.bad(f"{origin}: not valid JSON ({exc.msg})")
            continue
        except _DuplicateKey as exc:
            reader.bad(f"{origin}: key {exc.args[0]!r} appears twice in one object")
            continue
        problem = _check_entry(entry)
        if problem is not None:
            reader.bad(f"{origin}: {problem}")
            continue
        audio = _resolve(path.parent, entry["audio_filepath"])
        yield reader.item(audio, entry["text"], entry.get("duration"), origin)


def _read_tsv(path: Path, reader: _Reader) -> Iterator[Item | None]:
    first = True
    for number, line in _lines(path, reader):
        origin = f"{path}:{number}"
        header, first = first, False
        columns = line.split("\t")
        if len(columns) != 2:
            reader.bad(
                f"{origin}: expected 'path<TAB>text' (2 tab-separated columns), "
                f"found {len(columns)}"
            )
            continue
        name, text = columns
        if header and name.strip().lower() in ("path", "audio", "audio_filepath"):
            continue
        yield reader.item(_resolve(path.parent, name.strip()), text, None, origin)


def _read_kaldi(path: Path, reader: _Reader) -> Iterator[Item | None]:
    if (path / "segments").exists():
        raise InputError(f"{path}/segments: Kaldi segments are not supported; cut the audio first")
    text_file = path / "text"
    if not text_file.is_file():
        raise InputError(f"{path}: Kaldi data dir has wav.scp but no 'text' file")
    texts, text_twice = _kaldi_table(text_file, reader)
    scp = path / "wav.scp"
    locations, scp_twice = _kaldi_table(scp, reader)
    for utt, (number, _) in texts.items():
        if utt not in locations and utt not in scp_twice:
            reader.bad(f"{text_file}:{number}: utterance {utt!r} has no line in {scp.name}")
    for utt, (number, location) in locations.items():
        origin = f"{scp}:{number}"
        if not location:
            reader.bad(f"{origin}: expected 'utterance-id path'")
            continue
        if location.endswith("|") or location.startswith("|") or ".ark:" in location:
            reader.bad(
                f"{origin}: piped commands and ark offsets are not supported (never executed); "
                "write plain audio paths into wav.scp"
            )
            continue
        if utt not in texts:
            if utt not in text_twice:  # else already said
                reader.bad(f"{origin}: utterance {utt!r} has no line in {text_file.name}")
            continue
        yield reader.item(_resolve(path, location), texts[utt][1], None, origin)


def _split_id(line: str) -> tuple[str, str]:
    """'utt-id rest of line' (any whitespace after the id) as (id, rest)."""
    parts = line.strip().split(maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def _kaldi_table(path: Path, reader: _Reader) -> tuple[dict[str, tuple[int, str]], set[str]]:
    """utt-id -> (line number, rest of line) of a Kaldi table file, and the ids given twice.

    An id on two lines is bad (which line is right is unknown): with ``skip_bad`` every line of
    that id is left out of the table."""
    table: dict[str, tuple[int, str]] = {}
    first: dict[str, int] = {}
    twice: set[str] = set()
    for number, line in _lines(path, reader):
        utt, rest = _split_id(line)
        if utt in first:
            table.pop(utt, None)
            twice.add(utt)
            reader.bad(
                f"{path}:{number}: utterance id {utt!r} is also on line {first[utt]} "
                "(ambiguous: no line of it is used)"
            )
            continue
        first[utt] = number
        table[utt] = (number, rest)
    return table, twice


def _read_ls(path: Path, reader: _Reader) -> Iterator[Item | None]:
    seen: dict[str, str] = {}
    for trans in sorted(path.rglob("*.trans.txt")):
        for number, line in _lines(trans, reader):
            origin = f"{trans}:{number}"
            utt, transcript = _split_id(line)
            if utt in seen:
                reader.bad(f"{origin}: utterance id {utt!r} is also at {seen[utt]}")
                continue
            seen[utt] = origin
            audio = next(
                (
                    trans.parent / f"{utt}{s}"
                    for s in AUDIO_SUFFIXES
                    if (trans.parent / f"{utt}{s}").is_file()
                ),
                trans.parent / f"{utt}.flac",
            )
            yield reader.item(audio, transcript, None, origin)
