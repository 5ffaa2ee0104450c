"""``dyncli profile``: accuracy, executed FLOPs and real-time factor across skip thresholds.

One run produces a ``static`` row (full depth) and one row per threshold (and per model, with
``--models`` / ``--baseline``), all on the same utterances, threads and machine. This module
resolves what to run and assembles the report; the measuring lives in :mod:`dyncli.measure`:

* :mod:`~dyncli.measure.sweep`: accuracy and executed FLOPs from one shared pass per utterance,
  each row's WER with its interval and its paired WER difference against full depth;
* :mod:`~dyncli.measure.timing`: end-to-end timing (features + encoder + greedy decoding), every
  configuration back to back per utterance (batch) in ABBA order, ``--repeats auto`` until every
  speedup interval is within ``--precision`` or ``--time-budget`` runs out; encoder time is
  read inside each call;
* :mod:`~dyncli.measure.stats`: the paired bootstrap intervals;
* :mod:`~dyncli.measure.gate`: the three-way verdict (PASS 0, FAIL 1, INCONCLUSIVE 3).
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dyncli.checkpoint import Checkpoint, load_checkpoint
from dyncli.data.dataset import Utterance, load_utterances
from dyncli.data.manifest import read_manifest
from dyncli.data.text import Tokenizer
from dyncli.decoding import greedy_ctc
from dyncli.dynamic import build_policy
from dyncli.dynamic.operating_point import (
    canonical_threshold,
    check_stored_point,
    default_policy,
    policy_settings,
    stored_point,
)
from dyncli.dynamic.run import policy_runs
from dyncli.environment import describe
from dyncli.errors import UsageError
from dyncli.export.runtime import is_onnx_path
from dyncli.inference import pick_device
from dyncli.measure.evaluate import model_summary
from dyncli.measure.gate import ReleaseBars, judge, resolution_warnings, row_label
from dyncli.measure.report import ProfileReport, Row, pareto_flags
from dyncli.measure.stats import paired_wer_delta
from dyncli.measure.sweep import (
    PRIVATE_ERRORS,
    PRIVATE_WORDS,
    _batch_order,
    batched_flops,
    make_batches,
    onnx_row,
    public,
    sweep_rows,
    wer_delta,
)
from dyncli.measure.timing import Arm, TimingRun, dispersion, speedup, time_interleaved
from dyncli.methods.static import StaticPolicy
from dyncli.models.base import CTCEncoder
from dyncli.registry.manager import get_skip_policy, setting_flag


class _Stepper:
    """One unit of work (a batch: one utterance at batch size 1) under one configuration:
    features, encoder (timed inside, between synchronisations) and greedy decoding."""

    def __init__(
        self,
        model: CTCEncoder,
        tokenizer: Tokenizer,
        pairs: list[tuple[torch.Tensor, torch.Tensor]],
        policy: Any,
        sync: Callable[[], None],
    ) -> None:
        self.model, self.tokenizer, self.pairs, self.policy, self.sync = (
            model,
            tokenizer,
            pairs,
            policy,
            sync,
        )

    @torch.inference_mode()
    def __call__(self, unit: int) -> float:
        wave, n = self.pairs[unit]
        model = self.model
        feats, frames = model.features(wave, n)
        x, out_n = model.embed(feats, frames)
        self.sync()
        start = time.perf_counter()
        out = self.policy.encode(model, x, out_n)
        self.sync()
        encoder = time.perf_counter() - start
        for ids in greedy_ctc(out.log_probs, out.lengths, model.blank_id):
            self.tokenizer.decode(ids)
        return encoder


class _OnnxStepper:
    """One utterance through an exported graph in onnxruntime (front end, encoder and policy in
    one call) and greedy decoding; it has no separate encoder time."""

    def __init__(self, graph: Any, arrays: list[Any]) -> None:
        self.graph, self.arrays = graph, arrays

    def __call__(self, unit: int) -> float | None:
        out = self.graph.run(self.arrays[unit])
        self.graph.decode(out.log_probs)
        return None


def _time_configs(
    model: CTCEncoder,
    tokenizer: Tokenizer,
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    policies: Sequence[Any],
    threads: int,
    rounds: int | None,
    device: torch.device,
    precision: float,
    time_budget: float,
    progress: Callable[[int, float | None], None] | None = None,
) -> TimingRun:
    """End-to-end timing of each policy on every batch, back to back in alternating order
    (:func:`dyncli.measure.timing.time_interleaved`).

    A policy may be given as ``(model, tokenizer, policy)`` to time another model in the same
    rounds (``profile --models``), or as an :class:`~dyncli.export.runtime.OnnxModel` (an
    exported graph run by onnxruntime)."""
    from dyncli.export.runtime import OnnxModel

    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    arrays: list[Any] = []
    if any(isinstance(p, OnnxModel) for p in policies):
        arrays = [wave.detach().cpu().numpy() for wave, _ in pairs]  # converted once, untimed
    arms = []
    for i, p in enumerate(policies):
        if isinstance(p, OnnxModel):
            step: Callable[[int], float | None] = _OnnxStepper(p, arrays)
        elif isinstance(p, tuple):
            step = _Stepper(p[0], p[1], pairs, p[2], sync)
        else:
            step = _Stepper(model, tokenizer, pairs, p, sync)
        arms.append(Arm(f"config {i}", step))
    return time_interleaved(
        arms,
        len(pairs),
        threads=threads,
        rounds=rounds,
        precision=precision,
        time_budget=time_budget,
        sync=sync,
        progress=progress,
    )


def _interval_fields(prefix: str, run: TimingRun, arm: int, clock: str) -> dict[str, Any]:
    """``PREFIX``, ``PREFIX_low``, ``PREFIX_high``: arm 0's time over ``arm``'s, paired."""
    if run.pairs < 2:  # one utterance, one round: a ratio, no interval
        base, other = getattr(run.arms[0], clock), getattr(run.arms[arm], clock)
        return {prefix: sum(base) / sum(other), f"{prefix}_low": None, f"{prefix}_high": None}
    interval = speedup(run, arm, clock)
    return {prefix: interval.value, f"{prefix}_low": interval.low, f"{prefix}_high": interval.high}


def timing_fields(
    run: TimingRun,
    arm: int,
    unit_audio: Sequence[float],
    audio_seconds: float,
    encoder_timed: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """A row's timing figures: RTF (median over rounds, min, max, interval over visits), the
    speedup against arm 0 with intervals (wall and CPU), encoder speedup and share (None
    where ``encoder_timed`` says arm 0 or this arm has no encoder time of its own: an
    onnxruntime graph), the number of pairs and the rounds' dispersion."""
    from dyncli.measure.stats import paired_speedup

    times = run.arms[arm]
    rtfs = [t / audio_seconds for t in times.round_wall]
    rtf_low: float | None = None
    rtf_high: float | None = None
    if run.pairs >= 2:
        audio = [unit_audio[i % run.units] for i in range(len(times.wall))]
        rtf = paired_speedup(times.wall, audio)  # sum(wall) / sum(audio), paired per visit
        rtf_low, rtf_high = rtf.low, rtf.high
    iqr, warning = dispersion(times.round_wall)
    return {
        "rtf": statistics.median(rtfs),
        "rtf_min": min(rtfs),
        "rtf_max": max(rtfs),
        "rtf_low": rtf_low,
        "rtf_high": rtf_high,
        "rtfx": 1.0 / statistics.median(rtfs),
        **_interval_fields("speedup", run, arm, "wall"),
        **_interval_fields("cpu_speedup", run, arm, "cpu"),
        "encoder_speedup": sum(run.arms[0].encoder) / sum(times.encoder)
        if encoder_timed is None or (encoder_timed[0] and encoder_timed[arm])
        else None,
        "encoder_share": sum(times.encoder) / sum(times.wall)
        if encoder_timed is None or encoder_timed[arm]
        else None,
        "timing_pairs": run.pairs,
        "timing_iqr_median": iqr,
        "timing_warning": warning,
    }


def model_labels(paths: Sequence[str | Path]) -> list[str]:
    """Each path's shortest suffix that no other path in ``paths`` ends with: ``model.ckpt``,
    or ``a/model.ckpt`` beside ``b/model.ckpt`` (of the absolute, normalised paths)."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    labels = []
    for i, own in enumerate(parts):
        others = [q for j, q in enumerate(parts) if j != i]
        k = 1
        while k < len(own) and any(q[-k:] == own[-k:] for q in others):
            k += 1
        labels.append("/".join(own[-k:]))
    return labels


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing: loading it says so
        return Path(a).resolve() == Path(b).resolve()


def check_models(
    checkpoint: str | Path, models: Sequence[str | Path], baseline: str | Path | None = None
) -> None:
    """Refuse a ``--models`` entry given twice, or the same file as CHECKPOINT, and a
    ``--baseline`` that is CHECKPOINT or one of ``--models``: its rows would repeat under one
    label."""
    for i, path in enumerate(models):
        if _same_file(path, checkpoint):
            raise UsageError(
                f"--models {path} is the same file as CHECKPOINT ({checkpoint}), which is "
                "profiled already; leave it out of --models"
            )
        if any(_same_file(path, earlier) for earlier in models[:i]):
            raise UsageError(f"--models names {path} twice; give each checkpoint once")
    if baseline is not None:
        if _same_file(baseline, checkpoint):
            raise UsageError(
                f"--baseline {baseline} is the same file as CHECKPOINT ({checkpoint}): its full "
                "depth is the static row already; give the static model it came from"
            )
        if any(_same_file(baseline, path) for path in models):
            raise UsageError(
                f"--baseline {baseline} is also in --models; give it once, as --baseline"
            )


def sweep_origin(name: str, given: bool) -> str:
    """How the thresholds of policy ``name`` were chosen, for the report."""
    if given:
        return "--thresholds"
    if get_skip_policy(name).thresholds_from_data is not None:
        return (
            "quantiles of the exit criterion on these utterances' audio (label-free: no "
            "transcripts), one threshold per change of some utterance's exit, deduplicated; "
            "plus the stored operating point, if any"
        )
    return "the policy's default sweep, plus the stored operating point, if any"


def resolve_policy(
    ckpt: Checkpoint,
    policy: str | None,
    thresholds: Sequence[float] | None,
    overrides: dict[str, Any],
    at: float | None,
    waves: Sequence[torch.Tensor] = (),
) -> tuple[str, list[float], dict[str, Any], float | None]:
    """Policy name, thresholds (validated, ``at`` included) and config settings to profile.

    Defaults come from the checkpoint's stored operating point, then the registry (derived
    from ``waves``, the audio to be profiled, where the policy does so). Every threshold gets
    :func:`canonical_threshold` once, here.
    """
    stored = stored_point(ckpt.method)
    name = policy or (stored[0] if stored else default_policy(ckpt.method))
    spec = get_skip_policy(name)
    merged = policy_settings(ckpt, name, overrides)
    if thresholds:
        values = list(thresholds)
    else:
        values = list(spec.defaults_for(ckpt.model, waves))
        if stored and stored[0] == name:
            values.append(stored[1])
    if at is not None:
        values.append(at)
    values = sorted({canonical_threshold(v) for v in values})
    for v in values:
        spec.make_config(v, setting_flag, **merged)  # range check: refuses before any work
    stored_threshold = stored[1] if stored and stored[0] == name else None
    return name, values, merged, stored_threshold


def requested_policies(ckpt: Checkpoint, policy: str | None, models: bool = False) -> list[str]:
    """The policies ``--policy`` names: one, a comma list, or ``all`` (every registered policy
    this checkpoint can run: exits for the exit policies, a gate predictor for gates; with
    ``--models``, every registered policy, each checkpoint running those it can)."""
    from dyncli.registry.manager import skip_policies

    if policy is None:
        stored = stored_point(ckpt.method)
        return [stored[0] if stored else default_policy(ckpt.method)]
    if policy.strip() == "all" and models:
        return list(skip_policies())
    if policy.strip() == "all":
        return [name for name in skip_policies() if _can_run(ckpt.model, name)]
    names = [p.strip() for p in policy.split(",") if p.strip()]
    if not names:
        raise UsageError("--policy is empty")
    if len(set(names)) != len(names):
        raise UsageError(f"--policy names a policy twice: {policy}")
    for name in names:
        get_skip_policy(name)  # unknown names: one line listing the registered ones
    return names


def _other_model(
    path: str | Path,
    main: Checkpoint,
    names: Sequence[str],
    multi: bool,
    thresholds: Sequence[float] | None,
    overrides: dict[str, Any] | None,
    utts: Sequence[Utterance],
    waves: Sequence[torch.Tensor],
    device: torch.device,
    label: str,
    flag: str = "--models",
) -> tuple[list[dict[str, Any]], list[tuple[CTCEncoder, Tokenizer, Any]]]:
    """Rows and timed configurations of another checkpoint (``--models``): its full depth, and
    each requested policy it can run (at its default thresholds with several policies)."""
    from dyncli.measure.flops import FlopTable

    other = load_checkpoint(path)
    if other.model.sample_rate != main.model.sample_rate:
        raise UsageError(
            f"{flag} {path}: {other.model.sample_rate} Hz, but {main.path} runs at "
            f"{main.model.sample_rate} Hz"
        )
    model = other.model.to(device)
    table = FlopTable(model)
    full, _ = sweep_rows(other, utts, waves, "static", [], {}, table)
    rows = [{**full, "threshold": None}]
    configs: list[tuple[CTCEncoder, Tokenizer, Any]] = [(model, other.tokenizer, StaticPolicy())]
    for asked in names:
        spec = get_skip_policy(asked)
        if not _can_run(model, asked):
            continue
        fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        given = {k: v for k, v in (overrides or {}).items() if k in fields and v is not None}
        name, values, merged, _ = resolve_policy(
            other, asked, None if multi else thresholds, given, None, waves
        )
        values = [v for v in values if policy_runs(model, name, v, merged)]
        if not values:
            continue
        _, found = sweep_rows(other, utts, waves, name, values, merged, table)
        rows += found
        configs += [(model, other.tokenizer, build_policy(name, v, **merged)) for v in values]
    for row in rows:
        row["model"] = label
    return rows, configs


def _can_run(model: CTCEncoder, name: str) -> bool:
    """Whether ``model`` has what policy ``name`` needs (exits, a gate predictor)."""
    spec = get_skip_policy(name)
    if spec.needs_exits and not model.exits:
        return False
    defaults = spec.defaults_for(model)
    return bool(defaults) and policy_runs(model, name, defaults[0], {})


def _check_runtime(
    checkpoint: str | Path,
    runtime: str | None,
    models: Sequence[str | Path],
    baseline: str | Path | None,
    batch_size: int,
    device: str,
) -> bool:
    """Refuse what onnxruntime rows cannot do, before any work; True for
    ``--runtime onnxruntime``."""
    from dyncli.export.runtime import check_runtime_device, require_onnxruntime

    if is_onnx_path(checkpoint):
        raise UsageError(
            f"{checkpoint}: profile needs the checkpoint (its FLOPs and its full depth); give "
            "the checkpoint as CHECKPOINT and the .onnx file with --models, or use --runtime "
            "onnxruntime"
        )
    use_ort = runtime == "onnxruntime"
    files = [m for m in models if is_onnx_path(m)]
    if use_ort or files:
        if batch_size > 1:
            raise UsageError("onnxruntime runs one utterance at a time: drop --batch-size")
        check_runtime_device("onnxruntime", device)
        require_onnxruntime()
    if use_ort:
        from dyncli.export.onnx import require_onnx

        require_onnx()
        if baseline is not None:
            raise UsageError(
                "--baseline runs in dyncli eager: with --runtime onnxruntime profile the "
                "baseline in a run of its own (as CHECKPOINT)"
            )
        others = [str(m) for m in models if not is_onnx_path(m)]
        if others:
            raise UsageError(
                f"--runtime onnxruntime exports CHECKPOINT only; profile {others[0]} in a run "
                "of its own (as CHECKPOINT)"
            )
    return use_ort


def _exportable_plans(
    plans: list[tuple[str, list[float], dict[str, Any]]],
    multi: bool,
    warn: Callable[[str], None],
) -> list[tuple[str, list[float], dict[str, Any]]]:
    """The plans whose policy can go inside an exported graph: one that cannot is refused with
    one line (one --policy) or left out with a warning (several)."""
    from dyncli.export.onnx import exportable

    kept = []
    for name, values, merged in plans:
        if exportable(build_policy(name, values[0], **merged)):
            kept.append((name, values, merged))
        elif multi:
            warn(f"--runtime onnxruntime: the {name} policy cannot be exported yet; left out")
        else:
            raise UsageError(
                f"--runtime onnxruntime: the {name} policy cannot be exported yet (it has no "
                "exportable forward); use --runtime torch"
            )
    if not kept:
        raise UsageError("--runtime onnxruntime: none of the --policy policies can be exported")
    return kept


def _export_graphs(
    ckpt: Checkpoint, plans: Sequence[tuple[str, list[float], dict[str, Any]]], threads: int
) -> list[Any]:
    """Full depth and every (policy, threshold) of ``plans`` exported and loaded in
    onnxruntime, in the order of the profile's rows."""
    import tempfile

    from dyncli.export.runtime import export_run

    with tempfile.TemporaryDirectory(prefix="dyncli-profile-") as tmp:
        graphs = [export_run(ckpt, tmp, threads=threads)]
        for name, values, merged in plans:
            for v in values:
                policy = build_policy(name, v, **merged)
                graphs.append(
                    export_run(
                        ckpt, tmp, policy=policy, policy_name=name, threshold=v, threads=threads
                    )
                )
    return graphs


def _onnx_model(path: str | Path, ckpt: Checkpoint, threads: int) -> Any:
    """A ``--models`` .onnx file, refused unless it was exported from CHECKPOINT (its FLOPs and
    its dyncli twin come from the checkpoint)."""
    from dyncli.checkpoint import file_sha256
    from dyncli.export.runtime import OnnxModel

    graph = OnnxModel(path, threads)
    own = file_sha256(ckpt.path) if ckpt.path else ""
    if graph.source_sha256 != own:
        raise UsageError(
            f"--models {path} was not exported from CHECKPOINT ({ckpt.path}); profile it with "
            "the checkpoint it came from as CHECKPOINT"
        )
    return graph


def _twin_row(
    ckpt: Checkpoint,
    graph: Any,
    utts: Sequence[Utterance],
    waves: Sequence[torch.Tensor],
    static: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    table: Any,
) -> dict[str, Any]:
    """dyncli eager's row of the configuration inside ``graph``: found among ``rows`` (or
    ``static``), else swept now."""
    torch_static = static if static.get("runtime", "torch") == "torch" else None
    for row in rows:
        if row.get("runtime", "torch") == "torch" and row["threshold"] is None:
            torch_static = row
    if graph.policy == "static":
        if torch_static is not None:
            return torch_static
        found, _ = sweep_rows(ckpt, utts, waves, "static", [], {}, table)
        return found
    threshold = canonical_threshold(graph.threshold)
    settings = dict(graph.settings)
    _, (twin,) = sweep_rows(ckpt, utts, waves, graph.policy, [threshold], settings, table)
    return twin


def _full_errors(static: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[int]:
    """The per-utterance errors of CHECKPOINT's full depth in dyncli eager."""
    for row in [static, *rows]:
        if row.get("runtime", "torch") == "torch" and row["threshold"] is None:
            errors: list[int] = row[PRIVATE_ERRORS]
            return errors
    raise AssertionError("no full-depth row")


DEFAULT_PRECISION = 0.03
DEFAULT_TIME_BUDGET = 120.0


def _gate_delta(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """``gate_dwer`` (and ``_low``, ``_high``): ``row``'s WER minus the reference's, paired."""
    d = paired_wer_delta(reference[PRIVATE_ERRORS], row[PRIVATE_ERRORS], row[PRIVATE_WORDS])
    return {"gate_dwer": d.delta, "gate_dwer_low": d.low, "gate_dwer_high": d.high}


def _rebased(run: TimingRun, arm: int) -> TimingRun:
    """``run`` with arm ``arm`` moved to the front (speedups against it)."""
    arms = [run.arms[arm], *run.arms]
    return dataclasses.replace(run, arms=arms)


def _gate_speedup(run: TimingRun, base_arm: int, arm: int) -> dict[str, Any]:
    """``gate_speedup`` (and ``_low``, ``_high``): the reference's time over ``arm``'s."""
    shifted = _rebased(run, base_arm) if base_arm else run
    fields = _interval_fields("gate_speedup", shifted, arm + (1 if base_arm else 0), "wall")
    return fields


def _noise_floor(run: TimingRun, arm: int) -> dict[str, Any]:
    """Full depth against itself (``--calibrate``): its speedup interval is the run's noise."""
    if run.pairs < 2:
        return {
            "speedup": 1.0,
            "low": None,
            "high": None,
            "half_width": None,
            "reliable": False,
            "why": "one timed pair: no interval",
        }
    interval = speedup(run, arm)
    return {
        "speedup": interval.value,
        "low": interval.low,
        "high": interval.high,
        "half_width": interval.half_width,
        "pairs": interval.n,
        "reliable": interval.contains(1.0),
    }


def profile(
    *,
    checkpoint: str | Path,
    data: str | Path,
    policy: str | None = None,
    thresholds: Sequence[float] | None = None,
    overrides: dict[str, Any] | None = None,
    threads: int = 1,
    repeats: int | None = None,
    device: str = "cpu",
    skip_bad: bool = False,
    gate: ReleaseBars | None = None,
    batch_size: int = 1,
    progress: Callable[[str], None] | None = None,
    models: Sequence[str | Path] = (),
    baseline: str | Path | None = None,
    precision: float = DEFAULT_PRECISION,
    time_budget: float = DEFAULT_TIME_BUDGET,
    calibrate: bool = False,
    warn: Callable[[str], None] | None = None,
    runtime: str | None = None,
) -> ProfileReport:
    """Sweep skip policies over thresholds against full depth; see the module docstring.

    ``models``: other checkpoints timed in the same rounds against the same static row (their
    full depth, and the requested policies each can run), rows labelled with ``model``.
    ``baseline``: a static checkpoint whose full depth is timed and scored in the same run;
    every row is then also compared with it, and the gate's WER-increase and speedup bars are
    judged against it. ``repeats``: timed rounds; None times until every speedup interval's
    half-width is at most ``precision`` or ``time_budget`` seconds are spent. ``calibrate``
    times full depth against itself in the same rounds: the run's noise floor.
    ``runtime="onnxruntime"``: full depth and every threshold are exported on the fly and run
    by onnxruntime; those rows are judged against onnxruntime's full depth, and dyncli eager's
    rows (full depth and each threshold) are timed beside them in the same rounds. A ``.onnx``
    file in ``models`` (exported from CHECKPOINT) is one more onnxruntime row."""
    started = time.perf_counter()
    gate = gate or ReleaseBars()
    gate.validate()
    warn = warn or (lambda _msg: None)
    if (models or baseline is not None) and batch_size > 1:
        flag = "--models" if models else "--baseline"
        raise UsageError(f"{flag} times whole utterances one at a time: drop --batch-size")
    if repeats is not None and repeats < 1:
        raise UsageError("--repeats must be at least 1")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not 0 < precision < 1:
        raise UsageError(f"--precision must be between 0 and 1 (0.03 = 3%), got {precision}")
    if not time_budget > 0 or not math.isfinite(time_budget):
        raise UsageError(f"--time-budget must be a positive number of seconds, got {time_budget}")
    use_ort = _check_runtime(checkpoint, runtime, models, baseline, batch_size, device)
    everything = [*models, *([baseline] if baseline is not None else [])]
    check_models(checkpoint, models, baseline)
    main_label, *labels = model_labels([checkpoint, *everything])
    torch.set_num_threads(threads)
    dev = pick_device(device)
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model.to(dev)
    stored = stored_point(ckpt.method)
    if policy is None:  # the stored point's policy, settings and threshold are profiled
        check_stored_point(ckpt, "give --policy to profile another")
    names = requested_policies(ckpt, policy, bool(models))
    multi = len(names) > 1
    if multi and thresholds:
        raise UsageError(
            "--thresholds applies to one --policy (each policy's thresholds mean something "
            "else); with several, each sweeps its default thresholds"
        )
    if multi and gate.at is not None:
        raise UsageError("--at names a threshold of one policy: give a single --policy")
    if not models and not multi and not model.exits and get_skip_policy(names[0]).needs_exits:
        raise UsageError(
            f"{checkpoint}: a static checkpoint (no intermediate CTC heads); make a dynamic one "
            "with 'dyncli convert' (or profile the bundled dynamic model, or use --policy drop)"
        )
    manifest = read_manifest(data, skip_bad=skip_bad)
    utts, skipped = load_utterances(manifest, model.sample_rate, skip_bad)
    if not utts:
        raise UsageError(f"{data}: no utterances to profile")
    waves = [u.wave.to(dev) for u in utts]
    audio_seconds = sum(u.samples for u in utts) / model.sample_rate
    plans: list[tuple[str, list[float], dict[str, Any]]] = []
    for asked in names:
        if models and not _can_run(model, asked):
            continue  # with --models, each checkpoint runs the policies it can
        given = overrides or {}
        if multi:  # a setting goes to the policies that have it (--skip-layer: blank-skip)
            fields = {f.name for f in dataclasses.fields(get_skip_policy(asked).config_cls)}
            given = {k: v for k, v in given.items() if k in fields}
        name, values, merged, _ = resolve_policy(ckpt, asked, thresholds, given, gate.at, waves)
        if multi:  # keep what this model can run (drop: layer counts up to its depth)
            values = [v for v in values if policy_runs(model, name, v, merged)]
            if not values:
                raise UsageError(f"--policy {name}: none of its thresholds runs on this model")
        for v in values:
            build_policy(name, v, **merged).check(model)  # e.g. more layers than the model has
        if values:
            plans.append((name, values, merged))
    say = progress or (lambda _msg: None)
    if use_ort:
        plans = _exportable_plans(plans, multi, warn)

    count = sum(len(values) for _, values, _ in plans)
    say(f"accuracy and FLOPs: {len(utts)} utterances, {count} thresholds (shared sweep)")
    from dyncli.measure.flops import FlopTable

    table = FlopTable(model)  # one table (and its trace cache) for the whole run
    phase = time.perf_counter()
    static: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name, values, merged in plans:
        static, found = sweep_rows(ckpt, utts, waves, name, values, merged, table)
        rows += found
    if not plans:  # --models, and CHECKPOINT runs none of the policies: its full depth only
        static, _ = sweep_rows(ckpt, utts, waves, "static", [], {}, table)
    phases = {
        "load_seconds": phase - started,
        "accuracy_and_flops_seconds": time.perf_counter() - phase,
    }

    policies: list[Any] = [StaticPolicy()] + [
        build_policy(name, th, **merged) for name, values, merged in plans for th in values
    ]
    if use_ort:  # onnxruntime's rows first (the reference: its full depth), then dyncli eager's
        say(f"exporting {len(policies)} graphs for onnxruntime (full depth and each threshold)")
        graphs = _export_graphs(ckpt, plans, threads)
        say("accuracy of the exported graphs")
        depth = model.num_layers
        ort_static = onnx_row(graphs[0], utts, waves, static, depth)
        ort_rows = [
            onnx_row(g, utts, waves, twin, depth, ort_static[PRIVATE_ERRORS])
            for g, twin in zip(graphs[1:], rows, strict=True)
        ]
        static, rows = ort_static, [*ort_rows, {**static, "threshold": None}, *rows]
        policies = [*graphs, *policies]
    extra_rows: list[dict[str, Any]] = []
    base_row: dict[str, Any] | None = None
    for i, (path, label) in enumerate(zip(everything, labels, strict=True)):
        is_baseline = baseline is not None and i == len(everything) - 1
        if is_onnx_path(path):
            graph = _onnx_model(path, ckpt, threads)
            twin = _twin_row(ckpt, graph, utts, waves, static, rows, table)
            full = _full_errors(static, rows)  # CHECKPOINT's full depth, dyncli eager
            found = [onnx_row(graph, utts, waves, twin, model.num_layers, full)]
            found[0]["model"] = label
            extra_rows += found
            policies.append(graph)
            continue
        found, configs = _other_model(
            path,
            ckpt,
            [] if is_baseline else names,
            multi,
            thresholds,
            overrides,
            utts,
            waves,
            dev,
            label,
            "--baseline" if is_baseline else "--models",
        )
        for row in found:  # ratios against this run's static row, not the other model's own
            row["flops_ratio"] = row["gflops_per_audio_second"] / static["gflops_per_audio_second"]
            enc = row["encoder_gflops_per_audio_second"] / static["encoder_gflops_per_audio_second"]
            row["encoder_flops_ratio"] = enc
            row["predicted_encoder_speedup"] = 1.0 / enc if enc else None
        if is_baseline:
            base_row = found[0]
            base_row["baseline"] = True
        extra_rows += found
        policies += configs
    if everything:
        static["model"] = main_label
        for row in rows:
            row["model"] = main_label
    rows += extra_rows
    phases["accuracy_and_flops_seconds"] = time.perf_counter() - phase
    all_rows = [static, *rows]
    reference = static if base_row is None else base_row
    reference_name = (
        "full depth" if base_row is None else f"the --baseline model ({base_row['model']})"
    )
    for row in all_rows:  # the gate's WER increase: paired, against the reference
        row.update(_gate_delta(row, reference))
        if base_row is not None:
            row.update(
                wer_delta(
                    base_row[PRIVATE_ERRORS],
                    row[PRIVATE_ERRORS],
                    row[PRIVATE_WORDS],
                    "dwer_baseline",
                )
            )
    for line in resolution_warnings(
        gate, int(static["words"]), max((r["dwer_resolution"] for r in rows), default=None)
    ):
        warn(line)
    if calibrate:  # full depth once more, in the same rounds: the noise floor
        policies.append(StaticPolicy())
    pairs = make_batches(waves, batch_size, dev)
    rate = model.sample_rate
    order = _batch_order(waves, batch_size)
    unit_audio = [
        sum(int(waves[i].shape[0]) for i in chunk) / rate
        for chunk in (order[j : j + batch_size] for j in range(0, len(order), batch_size))
    ]
    how = "--repeats auto" if repeats is None else f"{repeats} rounds"
    say(
        f"timing: {len(policies)} configurations, back to back per "
        f"{'utterance' if batch_size == 1 else 'batch'}, {how}"
        + (
            f" (until every speedup is within +-{100 * precision:g}% or {time_budget:g} s)"
            if repeats is None
            else ""
        )
    )

    def on_round(done: int, widest: float | None) -> None:
        if widest is not None:
            say(f"  round {done}: widest speedup interval +-{100 * widest:.1f}%")

    phase = time.perf_counter()
    run = _time_configs(
        model,
        ckpt.tokenizer,
        pairs,
        policies,
        threads,
        repeats,
        dev,
        precision,
        time_budget,
        on_round,
    )
    phases["timing_seconds"] = time.perf_counter() - phase
    if batch_size > 1:
        # What the timed batches executed, padding included, replaces the per-utterance counts.
        counts = [batched_flops(model, table, pairs, p) for p in policies[: len(all_rows)]]
        base_total, base_encoder = counts[0]
        for row, (total, encoder) in zip(all_rows, counts, strict=True):
            row["flops_ratio"] = total / base_total
            row["encoder_flops_ratio"] = encoder / base_encoder
            row["predicted_encoder_speedup"] = base_encoder / encoder if encoder else None
            row["gflops_per_audio_second"] = total / 1e9 / audio_seconds
    encoder_timed = [r.get("runtime", "torch") == "torch" for r in all_rows]
    encoder_timed += [True] * (len(run.arms) - len(all_rows))  # --calibrate's arm
    for k, row in enumerate(all_rows):
        row.update(timing_fields(run, k, unit_audio, audio_seconds, encoder_timed))
    base_arm = all_rows.index(reference)
    for k, row in enumerate(all_rows):
        row.update(_gate_speedup(run, base_arm, k))
        if base_row is not None:
            row.update(_interval_fields("speedup_baseline", _rebased(run, base_arm), k + 1, "wall"))
    noise_floor = _noise_floor(run, len(all_rows)) if calibrate else None
    if noise_floor is not None and noise_floor["low"] is not None and not noise_floor["reliable"]:
        warn(
            f"unreliable environment: full depth timed against itself reads "
            f"{noise_floor['speedup']:.3f}x [{noise_floor['low']:.3f}, {noise_floor['high']:.3f}]"
            ", which excludes 1.00; no speed figure of this run can pass a gate"
        )
    for row, front in zip(all_rows, pareto_flags(all_rows), strict=True):
        row["pareto"] = front
    for row in rows:
        row["stored_operating_point"] = (
            stored is not None
            and row.get("model", main_label) == main_label
            and row.get("runtime", "torch") == static.get("runtime", "torch")
            and (row["policy"], row["threshold"]) == (stored[0], canonical_threshold(stored[1]))
        )
    if multi or everything:  # one table of every method: static, then the rows by executed FLOPs
        rows.sort(key=lambda r: r["flops_ratio"])
    # dyncli eager's rows beside onnxruntime's are for comparison: the gate judges the latter
    judged = [
        r for r in rows if r is not base_row and not (use_ort and r.get("runtime") == "torch")
    ]
    verdict = judge(
        [public(r) for r in judged] or [public(static)],
        gate,
        reference=reference_name,
        environment_reliable=None if noise_floor is None else noise_floor["reliable"],
    )
    summary = model_summary(ckpt, Path(checkpoint))
    summary["exits"] = model.exits
    point = ckpt.method.operating_point if ckpt.method is not None else None
    summary["operating_point"] = None if point is None else point.flat()
    if multi:
        policy_info: dict[str, Any] = {
            "name": ",".join(name for name, _, _ in plans),
            "config": {name: dict(merged) for name, _, merged in plans},
            "thresholds": {name: values for name, values, _ in plans},
            "sweep": {name: sweep_origin(name, False) for name, _, _ in plans},
        }
    elif plans:
        name, values, merged = plans[0]
        policy_info = {
            "name": name,
            "config": dict(merged),
            "thresholds": values,
            "sweep": sweep_origin(name, bool(thresholds)),
        }
    else:
        policy_info = {
            "name": names[0],
            "config": {},
            "thresholds": [],
            "sweep": "none: CHECKPOINT cannot run this policy (see the --models rows)",
        }
    return ProfileReport(
        model=summary,
        data={"path": str(data), "utterances": len(utts), "audio_seconds": audio_seconds},
        environment=describe(dev),
        policy=policy_info,
        static=Row.from_fields(static),
        rows=[Row.from_fields(r) for r in rows],
        gate=verdict,
        timing={
            "repeats": run.rounds,
            "rounds": run.rounds,
            "requested": "auto" if repeats is None else repeats,
            "pairs": run.pairs,
            "unit": "utterance" if batch_size == 1 else f"padded batch of {batch_size}",
            "order": "every configuration on each unit back to back: a random order (seed 0) "
            "on one unit, its reverse on the next (ABBA)",
            "stopped": run.stopped,
            "precision": run.precision,
            "time_budget": run.time_budget,
            "interval": "95% paired bootstrap over timed pairs (percentile, 9999 resamples, "
            "seed 0) of the ratio of summed times",
            "noise_floor": noise_floor,
            "warnings": [
                f"{row_label(r)}: {r['timing_warning']}" for r in all_rows if r["timing_warning"]
            ],
            "batch_size": batch_size,
            "runtime": "onnxruntime" if use_ort else "torch",
            "flops_basis": "per utterance (batch size 1)"
            if batch_size == 1
            else f"padded batches of {batch_size}, utterances sorted by length, padding counted",
            "warmup": "8 units per configuration",
            "sync": (
                "torch.utils.benchmark synchronises the device at each timer reading; encoder "
                "time is read between torch.cuda.synchronize() calls"
                if dev.type == "cuda"
                else "none needed: CPU work is synchronous"
            ),
            **phases,
        },
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )
