"""``dyncli evaluate`` and ``dyncli transcribe``: accuracy and real-time factor.

RTF (real-time factor) = processing seconds / audio seconds, end to end: log-mel features,
encoder and greedy decoding of each utterance, one at a time (batch size 1), audio already in
memory. RTFx = 1 / RTF. Timing uses ``torch.utils.benchmark`` with the thread count set
explicitly, after a warm-up pass; the median of ``repeats`` full passes is reported with its
min and max.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dyncli.checkpoint import Checkpoint, file_sha256, load_checkpoint
from dyncli.data.dataset import load_utterances
from dyncli.data.manifest import read_manifest
from dyncli.data.text import normalize_text
from dyncli.decoding import greedy_ctc
from dyncli.dynamic import SkipPolicy, run_policy
from dyncli.dynamic.operating_point import RunChoice, resolve_run
from dyncli.environment import describe
from dyncli.errors import UsageError
from dyncli.inference import pick_device
from dyncli.metrics import error_rates
from dyncli.progress import Progress, Silent

SCHEMA_VERSION = 1


@dataclass
class EvalReport:
    model: dict[str, Any]
    data: dict[str, Any]
    environment: dict[str, Any]
    run: RunChoice
    wer: float
    cer: float
    words: int
    rtf: float
    rtf_min: float
    rtf_max: float
    repeats: int
    skipped: list[str] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "data": self.data,
            "environment": self.environment,
            "run": self.run.to_json(),
            "result": {
                "wer": self.wer,
                "cer": self.cer,
                "words": self.words,
                "rtf": self.rtf,
                "rtf_min": self.rtf_min,
                "rtf_max": self.rtf_max,
                "rtfx": 1.0 / self.rtf if self.rtf > 0 else None,
                "repeats": self.repeats,
                "rtf_definition": "processing seconds / audio seconds, end to end "
                "(features + encoder + greedy decoding), batch size 1",
            },
            "skipped": self.skipped,
        }


def model_summary(ckpt: Checkpoint, path: Path) -> dict[str, Any]:
    return {
        "path": str(path),
        "sha256": file_sha256(path),
        "backbone": ckpt.backbone,
        "layers": ckpt.model.num_layers,
        "method": ckpt.method.name if ckpt.method is not None else "static",
    }


@dataclass
class Loaded:
    """A model ready to transcribe: ``decode`` takes one waveform (N,) at ``sample_rate``."""

    decode: Callable[[torch.Tensor], str]
    sample_rate: int
    summary: dict[str, Any]
    choice: RunChoice


def load_for_decoding(
    checkpoint: str | Path,
    dev: torch.device,
    policy: str | None,
    threshold: float | None,
    overrides: dict[str, Any] | None,
    full_depth: bool,
    runtime: str | None = None,
    threads: int = 1,
) -> Loaded:
    """A checkpoint under dyncli's eager path (``runtime`` torch, the default), the same run
    exported on the fly and run by onnxruntime (``onnxruntime``), or a ``.onnx`` file from
    ``dyncli export`` (onnxruntime; the policy inside it is what runs)."""
    from dyncli.export.runtime import OnnxModel, export_run, is_onnx_path

    if is_onnx_path(checkpoint):
        if runtime == "torch":
            raise UsageError(
                f"{checkpoint}: an ONNX file runs in onnxruntime; drop --runtime torch"
            )
        chosen = [
            flag
            for flag, value in (
                ("--policy", policy),
                ("--threshold", threshold),
                ("--full-depth", full_depth or None),
                ("--skip-layer", (overrides or {}).get("layer")),
                ("--skip-neighbours", (overrides or {}).get("neighbours")),
            )
            if value is not None
        ]
        if chosen:
            raise UsageError(
                f"{checkpoint}: an ONNX file runs the policy inside it; {', '.join(chosen)} "
                "choose a checkpoint's run: drop them, or export that point ('dyncli export')"
            )
        graph = OnnxModel(checkpoint, threads)
        choice = RunChoice(
            graph.policy, graph.threshold, dict(graph.settings), "inside the ONNX graph"
        )
        summary = {
            "path": str(checkpoint),
            "sha256": file_sha256(checkpoint),
            "backbone": graph.backbone,
            "layers": None,
            "method": f"ONNX export ({graph.describe()})",
            "runtime": "onnxruntime",
            "source_sha256": graph.source_sha256,
        }
        return Loaded(
            lambda w: graph.transcribe(w.cpu().numpy()), graph.sample_rate, summary, choice
        )
    ckpt = load_checkpoint(checkpoint)
    ckpt.model.to(dev)
    runner, choice = resolve_run(  # see dyncli.dynamic.operating_point
        ckpt,
        policy=policy,
        threshold=threshold,
        overrides=overrides,
        full_depth=full_depth,
        where=str(checkpoint),
    )
    summary = model_summary(ckpt, Path(checkpoint))
    if runtime == "onnxruntime":
        exported = export_run(
            ckpt,
            policy=None if choice.full_depth else runner,
            policy_name=choice.policy,
            threshold=choice.threshold,
            threads=threads,
        )
        summary["runtime"] = "onnxruntime"
        return Loaded(
            lambda w: exported.transcribe(w.cpu().numpy()),
            exported.sample_rate,
            summary,
            choice,
        )
    summary["runtime"] = "torch"
    return Loaded(lambda w: _decode_one(ckpt, runner, w), ckpt.model.sample_rate, summary, choice)


def _decode_one(ckpt: Checkpoint, runner: SkipPolicy, wave: torch.Tensor) -> str:
    """Features, encoder (under ``runner``) and greedy decoding of one waveform (N,)."""
    lengths = torch.tensor([wave.shape[0]], device=wave.device)
    out = run_policy(ckpt.model, runner, wave.unsqueeze(0), lengths)
    return ckpt.tokenizer.decode(greedy_ctc(out.log_probs, out.lengths, ckpt.model.blank_id)[0])


def evaluate(
    *,
    checkpoint: str | Path,
    data: str | Path,
    threads: int = 1,
    repeats: int = 3,
    device: str = "cpu",
    skip_bad: bool = False,
    policy: str | None = None,
    threshold: float | None = None,
    overrides: dict[str, Any] | None = None,
    full_depth: bool = False,
    on_skip: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    runtime: str | None = None,
) -> EvalReport:
    """WER/CER of greedy decoding and end-to-end RTF on ``data``.

    A dynamic checkpoint runs as ``transcribe`` runs it: at its stored operating point unless
    ``full_depth``, or as ``policy`` / ``threshold`` say (see
    :mod:`dyncli.dynamic.operating_point`).
    With ``skip_bad`` each bad entry is reported through ``on_skip`` (before any decoding) and
    left out. ``progress`` hears about reading, decoding and timing (only between timed passes).
    """
    from dyncli.export.runtime import check_runtime_device, is_onnx_path

    if repeats < 1:
        raise UsageError("--repeats must be at least 1")
    onnx = runtime == "onnxruntime" or (runtime is None and is_onnx_path(checkpoint))
    check_runtime_device("onnxruntime" if onnx else runtime, device)
    torch.set_num_threads(threads)
    dev = torch.device("cpu") if onnx else pick_device(device)
    loaded = load_for_decoding(
        checkpoint, dev, policy, threshold, overrides, full_depth, runtime, threads
    )
    manifest = read_manifest(data, skip_bad=skip_bad)
    shown = progress or Silent()
    if progress is not None:
        work = _audio_seconds(it.audio for it in manifest.items) * (1 + repeats)
        shown.begin(work, len(manifest.items))
    shown.stage("reading audio", len(manifest.items))
    utts, skipped = load_utterances(
        manifest, loaded.sample_rate, skip_bad, on_item=lambda: shown.advance(1)
    )
    for message in skipped:
        if on_skip is not None:
            on_skip(message)
    waves = [u.wave.to(dev) for u in utts]
    rate = loaded.sample_rate
    audio_seconds = sum(u.samples for u in utts) / rate

    @torch.inference_mode()
    def run_all() -> list[str]:
        shown.stage("decoding", audio_seconds)
        out = []
        for u, w in zip(utts, waves, strict=True):
            shown.advance(0, note=u.origin)
            out.append(loaded.decode(w))
            shown.advance(u.samples / rate)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    hyps = run_all()  # warm-up pass; its transcripts are the ones scored

    @torch.inference_mode()
    def unit(i: int) -> None:  # one utterance: features, encoder, decoding
        loaded.decode(waves[i])

    from dyncli.measure.timing import Arm, time_interleaved

    sync: Callable[[], None] = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    shown.stage("timing", repeats, timed=True)
    run = time_interleaved(
        [Arm("evaluate", unit)],
        len(waves),
        threads=threads,
        rounds=repeats,
        sync=sync,
        warmup=0,  # the scored pass above warmed every utterance
        progress=lambda _done, _widest: shown.advance(1),
    )
    times = run.arms[0].round_wall
    shown.end()
    rates = error_rates([u.text for u in utts], hyps)
    rtfs = [t / audio_seconds for t in times]
    return EvalReport(
        model=loaded.summary,
        data={"path": str(data), "utterances": len(utts), "audio_seconds": audio_seconds},
        environment=describe(dev),
        run=loaded.choice,
        wer=rates.wer,
        cer=rates.cer,
        words=rates.words,
        rtf=statistics.median(rtfs),
        rtf_min=min(rtfs),
        rtf_max=max(rtfs),
        repeats=repeats,
        skipped=skipped,
        examples=[
            {"ref": u.text, "hyp": h, "origin": u.origin}
            for u, h in zip(utts, hyps, strict=True)
            if normalize_text(u.text) != normalize_text(h)
        ][:5],
    )


def transcribe(
    *,
    checkpoint: str | Path,
    audio: list[Path],
    threads: int = 1,
    device: str = "cpu",
    policy: str | None = None,
    threshold: float | None = None,
    overrides: dict[str, Any] | None = None,
    full_depth: bool = False,
    skip_bad: bool = False,
    on_skip: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    runtime: str | None = None,
) -> tuple[list[tuple[Path, str]], RunChoice]:
    """Greedy transcripts of audio files, in the given order, and what ran.

    A dynamic checkpoint runs at its stored operating point unless ``full_depth``; ``policy``
    and ``threshold`` override it (the threshold alone keeps the stored policy). With
    ``skip_bad`` an unreadable file is reported through ``on_skip`` and left out.
    ``progress`` hears of each file (in audio seconds, from the file headers).
    """
    from dyncli.data.audio import load_audio
    from dyncli.errors import InputError
    from dyncli.export.runtime import check_runtime_device, is_onnx_path

    onnx = runtime == "onnxruntime" or (runtime is None and is_onnx_path(checkpoint))
    check_runtime_device("onnxruntime" if onnx else runtime, device)
    torch.set_num_threads(threads)
    dev = torch.device("cpu") if onnx else pick_device(device)
    loaded = load_for_decoding(
        checkpoint, dev, policy, threshold, overrides, full_depth, runtime, threads
    )
    shown = progress or Silent()
    seconds = [_audio_seconds([p]) for p in audio] if progress is not None else [0.0] * len(audio)
    shown.begin(sum(seconds), len(audio))
    shown.stage("transcribing", sum(seconds))
    out = []
    with torch.inference_mode():
        for p, length in zip(audio, seconds, strict=True):
            shown.advance(0, note=str(p))
            try:
                wave = load_audio(p, loaded.sample_rate).to(dev)
            except InputError as exc:
                if not skip_bad:
                    raise InputError(f"{exc} (use --skip-bad to skip it)") from None
                if on_skip is not None:
                    on_skip(str(exc))
                shown.advance(length)
                continue
            out.append((p, loaded.decode(wave)))
            shown.advance(length)
    shown.end()
    if audio and not out:  # --skip-bad skipped every file: nothing was transcribed
        raise InputError(f"none of the {len(audio)} audio files could be read (each said above)")
    return out, loaded.choice


def _audio_seconds(paths: Iterable[Path]) -> float:
    """Seconds of audio in ``paths``, from the file headers (unreadable files count 0)."""
    from dyncli.data.audio import audio_duration
    from dyncli.errors import InputError

    total = 0.0
    for p in paths:
        try:
            total += audio_duration(p)
        except InputError:
            pass
    return total
