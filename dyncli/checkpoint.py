"""The dyncli checkpoint: versioned, self-describing, and loaded without executing code.

A checkpoint is a ``torch.save`` archive of one dict of plain types and tensors::

    format          "dyncli-checkpoint"
    format_version  2 (1 and older are read: :func:`migrate` brings them up to date on load)
    dyncli_version  version that wrote it
    backbone        registered backbone name, e.g. "conformer"
    config          the backbone's config dataclass as a dict (front end included)
    vocab_size      CTC classes, blank included
    tokenizer       tokenizer state (kind + symbols or sentencepiece proto bytes)
    state_dict      weights (float32, or float16 when saved with ``half=True``)
    dtype           "float32" or "float16"
    method          None for a static model; the dynamic method's record otherwise
                    (:class:`~dyncli.dynamic.records.MethodRecord`, stored as plain types)
    provenance      training data fingerprint, seed, command, dates
    metrics         e.g. dev WER at the saved epoch

It is read with ``torch.load(weights_only=True)``, which refuses pickled code, and written
atomically (temporary file, then rename). Every field is checked once, on load
(:func:`validate_record`), and weights holding NaN or Inf are refused on save and on load.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dyncli import __version__
from dyncli.data.text import Tokenizer, tokenizer_from_state
from dyncli.dynamic.records import MethodRecord, OperatingPoint, point_from_flat
from dyncli.errors import CheckpointError, DyncliError, InputError, JobFailed
from dyncli.fileio import atomic_write
from dyncli.models.base import EXIT_HEAD_FORMS, CTCEncoder
from dyncli.models.config import config_from_dict, config_to_dict
from dyncli.registry.manager import get_backbone

FORMAT = "dyncli-checkpoint"
FORMAT_VERSION = 2


@dataclass
class Checkpoint:
    model: CTCEncoder
    tokenizer: Tokenizer
    backbone: str
    config: Any
    method: MethodRecord | None = None  # a mapping given here is read into a MethodRecord
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    path: Path | None = None
    format_version: int | None = None  # as stored; None for a model read by a plugin

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "method" and value is not None and not isinstance(value, MethodRecord):
            value = MethodRecord.from_payload(value)
        super().__setattr__(name, value)


class NonFiniteWeights(JobFailed):
    """:func:`save_checkpoint` refused weights holding NaN or Inf (a diverged or damaged
    model). ``tensor`` is the first such tensor, ``count`` how many there are."""

    def __init__(self, message: str, tensor: str, count: int) -> None:
        super().__init__(message)
        self.tensor, self.count = tensor, count


def nonfinite(tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int, int] | None:
    """(first tensor name, how many, of how many) for floating tensors holding NaN or Inf;
    None when all are finite. One ``isfinite().all()`` per tensor."""
    first, bad, total = "", 0, 0
    for name, t in tensors:
        total += 1
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            first, bad = first or name, bad + 1
    return (first, bad, total) if bad else None


def _nonfinite_text(found: tuple[str, int, int]) -> str:
    name, bad, total = found
    return f"{bad} of {total} weight tensors hold NaN or Inf values (first: {name})"


def save_checkpoint(path: str | Path, ckpt: Checkpoint, half: bool = False) -> None:
    """Write ``ckpt`` atomically. ``half`` stores floating-point weights as float16.

    Weights holding NaN or Inf are refused (:class:`NonFiniteWeights`): such a model
    transcribes nothing, and nothing is written."""
    state = {
        k: (v.detach().to("cpu").half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in ckpt.model.state_dict().items()
    }
    found = nonfinite(state.items())
    if found is not None:
        why = "the model diverged or was damaged"
        if half and nonfinite(ckpt.model.state_dict().items()) is None:
            why = "they overflow float16; save without half precision"
        raise NonFiniteWeights(
            f"{path}: not saved: {_nonfinite_text(found)}; {why}", found[0], found[1]
        )
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dyncli_version": __version__,
        "backbone": ckpt.backbone,
        "config": config_to_dict(ckpt.config),
        "vocab_size": int(ckpt.model.head.out_features),
        "blank_id": int(ckpt.model.blank_id),
        "tokenizer": ckpt.tokenizer.to_state(),
        "state_dict": state,
        "dtype": "float16" if half else "float32",
        "method": None if ckpt.method is None else plain_types(ckpt.method.to_payload()),
        "provenance": plain_types(ckpt.provenance),
        "metrics": plain_types(ckpt.metrics),
    }
    atomic_write(path, lambda fh: torch.save(payload, fh))


def plain_types(value: Any) -> Any:
    """Metadata as the plain types ``weights_only`` loading accepts (str, not subclasses)."""
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value
    if isinstance(value, dict):
        return {str(k): plain_types(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_types(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _check_exists(p: Path) -> None:
    """A missing path, a broken symlink and a symlink loop, each said as what it is."""
    try:
        p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise CheckpointError(
                f"{p}: a broken symbolic link (to {os.readlink(p)}); no checkpoint there"
            ) from None
        raise CheckpointError(f"{p}: checkpoint not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError(
                f"{p}: a symbolic link loop (following it leads back to it); "
                "point the link at a checkpoint"
            ) from None
        raise CheckpointError(f"{p}: cannot be read ({exc.strerror or exc})") from None


def _not_torch(p: Path) -> str | None:
    """What ``p`` is when it is plainly not a PyTorch archive or pickle (from its first
    bytes), else None."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return None  # a zip archive (torch.save) or a pickle (legacy torch.save)
    if not head:
        return "an empty file"
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "JSON text (a manifest or a config?), not a PyTorch archive"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the 64th byte
            return "binary data that is not a PyTorch archive"
    return "a text file, not a PyTorch archive"


def read_payload(path: str | Path) -> dict[str, Any]:
    """Load and validate the raw checkpoint dict; refuses anything that is not a dyncli file."""
    p = Path(path)
    _check_exists(p)
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file, so not a checkpoint")
    what = _not_torch(p)
    if what is not None:
        raise CheckpointError(f"{p}: not a readable checkpoint: {what}")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{p}: refused: the file holds pickled objects or code, not plain weights "
            "(dyncli never executes code from a checkpoint)"
        ) from None
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError... for junk
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{p}: not a readable checkpoint (truncated or not a PyTorch archive: {first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{p}: not a dyncli checkpoint (no '{FORMAT}' header); "
            "train one with 'dyncli train' or import the model first"
        )
    version = payload.get("format_version")
    if version is None:
        raise CheckpointError(f"{p}: damaged checkpoint: it has no 'format_version' field")
    if type(version) is not int or version < 0:
        raise CheckpointError(
            f"{p}: damaged checkpoint: 'format_version' is {version!r}, not a version number"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format version {version} is newer than this dyncli "
            f"(reads up to {FORMAT_VERSION}); upgrade dyncli"
        )
    for key in ("backbone", "config", "vocab_size", "tokenizer", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"{p}: checkpoint is missing '{key}'")
    migrate(p, payload)
    validate_record(p, payload)
    return payload


def migrate(p: Path, payload: dict[str, Any]) -> None:
    """Bring a checkpoint payload of an older format up to :data:`FORMAT_VERSION`, in place:
    the one place where older files are read differently (``format_version`` keeps what was
    stored).

    * Files written before blank ids were stored (no ``blank_id``): the blank is id 0
      (dyncli's own tokenizers put it there).
    * Format 1: the operating point was flat (``{"policy", "threshold", "layer", ...,
      "dev_wer", ...}``); format 2 nests the policy's settings and how the point was chosen
      (:class:`~dyncli.dynamic.records.OperatingPoint`), split with the policy's config fields.
    """
    version = payload["format_version"]
    payload.setdefault("blank_id", 0)
    if version < 2:
        method = payload.get("method")
        point = method.get("operating_point") if isinstance(method, dict) else None
        if isinstance(point, dict) and isinstance(point.get("policy"), str):
            method["operating_point"] = point_from_flat(point).to_payload()  # type: ignore[index]


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _expect(p: Path, ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise CheckpointError(f"{p}: damaged checkpoint: '{name}' is {shown}, not {what}")


def validate_record(p: Path, payload: dict[str, Any]) -> None:
    """Check the types and ranges of every field of a checkpoint record (the model config is
    checked by ``config_from_dict``); a bad field is one CheckpointError naming file and field."""
    _expect(p, isinstance(payload["backbone"], str), "backbone", payload["backbone"], "a name")
    _expect(p, isinstance(payload["config"], dict), "config", payload["config"], "a mapping")
    vocab = payload["vocab_size"]
    _expect(p, _is_int(vocab) and vocab >= 2, "vocab_size", vocab, "an integer >= 2")
    blank = payload.get("blank_id", 0)
    if not (_is_int(blank) and 0 <= blank < vocab):
        raise CheckpointError(
            f"{p}: damaged checkpoint: 'blank_id': blank id {blank!r} outside the vocabulary "
            f"of {vocab}"
        )
    _validate_tokenizer(p, payload["tokenizer"])
    state = payload["state_dict"]
    _expect(p, isinstance(state, dict), "state_dict", state, "a mapping of tensors")
    for k, v in state.items():
        ok = isinstance(k, str) and isinstance(v, torch.Tensor)
        _expect(p, ok, f"state_dict[{k!r}]", type(v).__name__, "a tensor")
    dtype = payload.get("dtype", "float32")
    _expect(p, dtype in ("float32", "float16"), "dtype", dtype, "'float32' or 'float16'")
    for key in ("provenance", "metrics"):
        value = payload.get(key)
        _expect(p, value is None or isinstance(value, dict), key, value, "a mapping")
    method = payload.get("method")
    _expect(p, method is None or isinstance(method, dict), "method", method, "a mapping")
    if method is not None:
        _validate_method(p, method)


def _validate_tokenizer(p: Path, tok: Any) -> None:
    _expect(p, isinstance(tok, dict), "tokenizer", tok, "a mapping")
    kind = tok.get("kind")
    kinds = ("char", "vocab", "sentencepiece")
    _expect(p, kind in kinds, "tokenizer.kind", kind, f"one of {', '.join(kinds)}")
    if kind == "char":
        symbols = tok.get("symbols")
        ok = isinstance(symbols, str) or (
            isinstance(symbols, list) and all(isinstance(s, str) for s in symbols)
        )
        _expect(p, ok, "tokenizer.symbols", symbols, "a string of symbols")
    elif kind == "vocab":
        tokens = tok.get("tokens")
        ok = isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
        _expect(p, ok, "tokenizer.tokens", tokens, "a list of strings")
        blank = tok.get("blank_id")
        ok = _is_int(blank) and 0 <= blank < len(tokens)
        _expect(p, ok, "tokenizer.blank_id", blank, "an id in the vocabulary")
        for key, types in (("word_delimiter", (str,)), ("unk", (str, type(None)))):
            value = tok.get(key)
            ok = key not in tok or isinstance(value, types)
            _expect(p, ok, f"tokenizer.{key}", value, "a string")
        lower = tok.get("lower", False)
        _expect(p, isinstance(lower, bool), "tokenizer.lower", lower, "true or false")
    else:
        proto = tok.get("model_proto")
        ok = isinstance(proto, bytes)
        _expect(p, ok, "tokenizer.model_proto", proto, "sentencepiece model bytes")


def _method_spec(method: MethodRecord | None) -> Any:
    """The registered method that wrote ``method`` (None: static, or not installed)."""
    if method is None:
        return None
    from dyncli.registry.manager import methods

    return methods().get(method.name)


def restore_method(p: Path, model: Any, method: MethodRecord | None) -> None:
    """Re-attach the modules the checkpoint's method added to the model (its spec's
    ``restore``), before the weights load; a bad record is a corrupt checkpoint."""
    spec = _method_spec(method)
    if spec is None or spec.restore is None or method is None:
        return
    try:
        spec.restore(model, method)
    except (KeyError, TypeError, ValueError, DyncliError) as exc:
        part = method.get(spec.name)
        raise CheckpointError(f"{p}: bad {spec.name} {part!r} in the method ({exc})") from None


def _method_part(method: MethodRecord) -> dict[str, Any]:
    """The method's own part of its record (``record[name]``, e.g. the gates' predictor and
    open rates), under its name, for ``inspect``'s JSON."""
    own = method.extra.get(method.name)
    return {method.name: own} if isinstance(own, dict) else {}


def _validate_method(p: Path, method: dict[str, Any]) -> None:
    exits = method.get("exits") or []
    ok = isinstance(exits, list) and all(_is_int(k) and k > 0 for k in exits)
    _expect(p, ok, "method.exits", exits, "a list of layer numbers")
    for key in ("name", "exit_head", "default_policy"):
        value = method.get(key)
        _expect(p, value is None or isinstance(value, str), f"method.{key}", value, "a string")
    own = method.get("name")  # the method's own part of the record is under its name
    for part in (own, "operating_point", "distillation", "skip_aware_training"):
        if not isinstance(part, str) or part == "static":
            continue
        value = method.get(part)
        ok = value is None or isinstance(value, dict)
        _expect(p, ok, f"method.{part}", value, "a mapping")
    point = method.get("operating_point")
    if point:
        policy = point.get("policy")
        _expect(p, isinstance(policy, str), "operating_point.policy", policy, "a policy name")
        threshold = point.get("threshold")
        ok = _is_number(threshold)
        _expect(p, ok, "operating_point.threshold", threshold, "a finite number")
        for part in ("settings", "chosen"):
            value = point.get(part)
            ok = value is None or isinstance(value, dict)
            _expect(p, ok, f"operating_point.{part}", value, "a mapping")
        point = OperatingPoint.from_payload(point).flat()
        layer = point.get("layer")
        ok = layer is None or (_is_int(layer) and layer > 0)
        _expect(p, ok, "operating_point.layer", layer, "a layer number")
        neighbours = point.get("neighbours")
        ok = neighbours is None or (_is_int(neighbours) and neighbours >= 0)
        _expect(p, ok, "operating_point.neighbours", neighbours, "an integer >= 0")


def describe_mismatch(model: dict[str, Any], stored: dict[str, Any], show: int = 3) -> str:
    """One line on how a state dict differs from a model's: counts, then the first ``show``
    missing, unexpected and differently shaped names. Empty when they match."""

    def some(names: list[str]) -> str:
        more = f", ... {len(names) - show} more" if len(names) > show else ""
        return ", ".join(names[:show]) + more

    missing = [k for k in model if k not in stored]
    unexpected = [k for k in stored if k not in model]
    shapes = [
        f"{k} stored {list(stored[k].shape)}, model {list(model[k].shape)}"
        for k in model
        if k in stored and tuple(stored[k].shape) != tuple(model[k].shape)
    ]
    parts = [
        f"{len(names)} {what} ({some(names)})"
        for what, names in (("missing", missing), ("unexpected", unexpected))
        if names
    ]
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({some(shapes)})")
    return "; ".join(parts)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model (float32, eval mode, on the CPU) and tokenizer from ``path``.

    A directory is read by the plugin that accepts it (``register_checkpoint_readers``; the
    ``dyncli-hf`` plugin reads Hugging Face CTC model directories). Weights holding NaN or Inf
    are refused."""
    p = Path(path)
    _check_exists(p)
    if p.is_dir():
        return _read_foreign(p)
    payload = read_payload(p)
    try:
        spec = get_backbone(str(payload["backbone"]))
    except InputError as exc:
        raise CheckpointError(f"{p}: {exc}") from None
    try:
        config: Any = config_from_dict(spec.config_cls, payload["config"])
    except CheckpointError as exc:
        raise CheckpointError(f"{p}: damaged checkpoint: {exc}") from None
    vocab_size = int(payload["vocab_size"])
    try:
        model = spec.build(config, vocab_size)
    except DyncliError as exc:
        raise CheckpointError(f"{p}: {exc}") from None
    except Exception as exc:  # e.g. d_model not divisible by num_heads: the factory's error
        raise CheckpointError(
            f"{p}: the stored model config does not build a model "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    stored = payload.get("method")
    method = None if stored is None else MethodRecord.from_payload(stored)
    exits = method.exits if method is not None else []
    try:
        model.attach_exits([int(k) for k in exits], init_from_final=False)
    except (TypeError, ValueError, DyncliError) as exc:
        raise CheckpointError(f"{p}: bad exits {exits!r} in checkpoint method ({exc})") from None
    form = (method.exit_head if method is not None else None) or "softmax"
    if form not in EXIT_HEAD_FORMS:
        raise CheckpointError(f"{p}: unknown exit head form {form!r} in checkpoint method")
    model.exit_head_form = str(form)
    model.blank_id = int(payload["blank_id"])
    restore_method(p, model, method)
    state = {
        k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()
    }
    mismatch = describe_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{p}: weights do not match the stored config: {mismatch}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{p}: weights do not match the stored config ({_first_line(exc)})"
        ) from None
    found = nonfinite(state.items())
    if found is not None:
        raise CheckpointError(
            f"{p}: refused: {_nonfinite_text(found)}; the model is damaged or its training diverged"
        )
    try:
        tokenizer = tokenizer_from_state(payload["tokenizer"])
    except DyncliError as exc:
        raise CheckpointError(f"{p}: damaged checkpoint: tokenizer: {exc}") from None
    model.eval()
    return Checkpoint(
        model=model,
        tokenizer=tokenizer,
        backbone=str(payload["backbone"]),
        config=config,
        method=method,
        provenance=dict(payload.get("provenance") or {}),
        metrics=dict(payload.get("metrics") or {}),
        dtype=str(payload.get("dtype", "float32")),
        path=p,
        format_version=int(payload["format_version"]),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split())[:300] if text else type(exc).__name__


def _read_foreign(p: Path) -> Checkpoint:
    from dyncli.registry.manager import checkpoint_readers

    readers = checkpoint_readers()
    for spec in readers.values():
        if spec.accepts(p):
            ckpt: Checkpoint = spec.read(p)
            ckpt.path = p
            found = nonfinite(ckpt.model.state_dict().items())
            if found is not None:
                raise CheckpointError(f"{p}: refused: {_nonfinite_text(found)}")
            return ckpt
    if readers:
        why = "; ".join(
            f"the {name} reader: {spec.explain(p) if spec.explain else 'not its format'}"
            for name, spec in readers.items()
        )
        raise CheckpointError(
            f"{p}: a directory, not a dyncli checkpoint, and no reader takes it ({why})"
        )
    raise CheckpointError(
        f"{p}: a directory, not a dyncli checkpoint, and no installed plugin reads it "
        "(pip install -e plugins/dyncli-hf reads Hugging Face CTC model directories)"
    )


def file_sha256(path: str | Path) -> str:
    """sha256 of a file; of a directory (an imported model), over its files' names and bytes."""
    if Path(path).is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in Path(path).rglob("*") if q.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0" + file_sha256(f).encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def summarize(path: str | Path) -> dict[str, Any]:
    """What ``dyncli inspect`` shows: architecture, size, tokenizer, method, provenance."""
    ckpt = load_checkpoint(path)
    model = ckpt.model
    params = sum(p.numel() for p in model.parameters())
    method = ckpt.method or MethodRecord()
    point = method.operating_point
    return {
        "path": str(path),
        "format_version": ckpt.format_version,
        "backbone": ckpt.backbone,
        "parameters": params,
        "layers": model.num_layers,
        "config": config_to_dict(ckpt.config),
        "ctc_heads": 1 + len(method.exits),
        "vocab_size": int(model.head.out_features),
        "tokenizer": ckpt.tokenizer.kind,
        "sample_rate": model.sample_rate,
        "stored_dtype": ckpt.dtype,
        "method": method.name,
        "exits": model.exits,
        "operating_point": None if point is None else point.flat(),
        "distillation": method.distillation,
        **_method_part(method),
        "record": None if ckpt.method is None else ckpt.method.json(),
        "metrics": ckpt.metrics,
        "provenance": ckpt.provenance,
        "sha256": file_sha256(path),
    }
