"""dyncli-hf: Hugging Face wav2vec2 / HuBERT / WavLM CTC model directories as dyncli checkpoints.

Registers a checkpoint reader (every command that takes a checkpoint accepts such a directory)
and the command ``dyncli import HF_DIR -o OUT.ckpt``. See README.md.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dyncli import hookimpl
from dyncli.errors import CheckpointError, UsageError
from dyncli.registry import CheckpointReaderSpec

ARCHITECTURES = {"Wav2Vec2ForCTC": "wav2vec2", "HubertForCTC": "hubert", "WavLMForCTC": "wavlm"}
WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def accepts(path: Path) -> bool:
    """A directory with a ``config.json`` and a weights file."""
    p = Path(path)
    return (p / "config.json").is_file() and any((p / w).is_file() for w in WEIGHTS)


def explain(path: Path) -> str:
    """Why :func:`accepts` refused ``path``: which file it looked for."""
    p = Path(path)
    if not (p / "config.json").is_file():
        return "no config.json in it"
    return f"config.json but no {' or '.join(WEIGHTS)} beside it"


def _json(path: Path, name: str, required: bool = True) -> dict[str, Any]:
    f = path / name
    if not f.is_file():
        if required:
            raise CheckpointError(f"{path}: no {name}")
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{f}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{f}: not a JSON object")
    return data


def check_config(path: Path, cfg: dict[str, Any]) -> str:
    """The architecture, or a one-line error naming what is not supported."""
    archs = cfg.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise UsageError(
            f"{path / 'config.json'}: 'architectures' is {archs!r}; it must be a list of names, "
            'e.g. ["Wav2Vec2ForCTC"]'
        )
    arch = archs[0] if archs else None
    if arch not in ARCHITECTURES:
        raise UsageError(
            f"{path}: architecture {arch!r} is not supported; dyncli-hf reads "
            f"{', '.join(ARCHITECTURES)}"
        )
    checks = {
        "feat_extract_norm": (cfg.get("feat_extract_norm", "group"), ("group", "layer")),
        "hidden_act": (cfg.get("hidden_act", "gelu"), ("gelu",)),
        "feat_extract_activation": (cfg.get("feat_extract_activation", "gelu"), ("gelu",)),
        "add_adapter": (bool(cfg.get("add_adapter", False)), (False,)),
        "feat_proj_layer_norm": (cfg.get("feat_proj_layer_norm", True), (True,)),
        "conv_pos_batch_norm": (bool(cfg.get("conv_pos_batch_norm", False)), (False,)),
    }
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise UsageError(f"{path}: config option {key}={value!r} is not supported")
    return str(arch)


def _int(path: Path, cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    """``cfg[key]`` as a positive integer, or one line naming the file and the key."""
    value = cfg.get(key, default)
    if value is None:
        raise CheckpointError(f"{path / 'config.json'}: no '{key}'")
    if type(value) is not int or value <= 0:
        raise CheckpointError(f"{path / 'config.json'}: '{key}' is {value!r}, not an integer > 0")
    return value


def _ints(path: Path, cfg: dict[str, Any], key: str) -> list[int]:
    """``cfg[key]`` as a non-empty list of positive integers (the convolution stack)."""
    value = cfg.get(key)
    if value is None:
        raise CheckpointError(f"{path / 'config.json'}: no '{key}'")
    if not isinstance(value, list) or not value or not all(type(v) is int and v > 0 for v in value):
        raise CheckpointError(
            f"{path / 'config.json'}: '{key}' is {value!r}, not a list of integers > 0"
        )
    return list(value)


def _float(path: Path, cfg: dict[str, Any], key: str, default: float) -> float:
    value = cfg.get(key, default)
    if type(value) not in (int, float) or not 0 <= value < 1:
        raise CheckpointError(f"{path / 'config.json'}: '{key}' is {value!r}, not in [0, 1)")
    return float(value)


def _check_safetensors(path: Path) -> None:
    """Open a ``.safetensors`` file's header: a truncated or damaged file is one line."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            fh.keys()
    except Exception as exc:  # safetensors raises its own SafetensorError (an Exception)
        first = " ".join(str(exc).split())[:160]
        raise CheckpointError(
            f"{path}: damaged or truncated safetensors file ({first}); download it again"
        ) from None


def wav2vec2_config(path: Path, cfg: dict[str, Any], arch: str) -> Any:
    """dyncli's ``Wav2Vec2Config`` from ``config.json`` (and the feature extractor's settings),
    every field checked; errors name the file and the key."""
    from dyncli.models.config import Wav2Vec2Config

    # The feature extractor's settings: preprocessor_config.json, or (newer transformers) the
    # "feature_extractor" entry of processor_config.json.
    pre = _json(path, "preprocessor_config.json", required=False) or (
        _json(path, "processor_config.json", required=False).get("feature_extractor") or {}
    )
    dims, kernels = _ints(path, cfg, "conv_dim"), _ints(path, cfg, "conv_kernel")
    strides = _ints(path, cfg, "conv_stride")
    if not len(dims) == len(kernels) == len(strides):
        raise CheckpointError(
            f"{path / 'config.json'}: conv_dim, conv_kernel and conv_stride differ in length "
            f"({len(dims)}, {len(kernels)}, {len(strides)})"
        )
    rate = pre.get("sampling_rate", 16000)
    if type(rate) is not int or rate <= 0:
        raise CheckpointError(f"{path}: feature extractor sampling_rate {rate!r} is not > 0")
    return Wav2Vec2Config(
        extractor_mode=f"{cfg.get('feat_extract_norm', 'group')}_norm",
        extractor_conv_layer_config=[list(c) for c in zip(dims, kernels, strides, strict=True)],
        extractor_conv_bias=bool(cfg.get("conv_bias", False)),
        encoder_embed_dim=_int(path, cfg, "hidden_size"),
        encoder_projection_dropout=_float(path, cfg, "feat_proj_dropout", 0.0),
        encoder_pos_conv_kernel=_int(path, cfg, "num_conv_pos_embeddings"),
        encoder_pos_conv_groups=_int(path, cfg, "num_conv_pos_embedding_groups"),
        encoder_num_layers=_int(path, cfg, "num_hidden_layers"),
        encoder_num_heads=_int(path, cfg, "num_attention_heads"),
        encoder_attention_dropout=_float(path, cfg, "attention_dropout", 0.0),
        encoder_ff_interm_features=_int(path, cfg, "intermediate_size"),
        encoder_ff_interm_dropout=_float(path, cfg, "activation_dropout", 0.0),
        encoder_dropout=_float(path, cfg, "hidden_dropout", 0.0),
        encoder_layer_norm_first=bool(cfg.get("do_stable_layer_norm", False)),
        sample_rate=rate,
        normalize_waveform=bool(pre.get("do_normalize", False)),
        wavlm=arch == "WavLMForCTC",
        encoder_num_buckets=_int(path, cfg, "num_buckets", 320),
        encoder_max_distance=_int(path, cfg, "max_bucket_distance", 800),
    )


def _check_bin(path: Path) -> None:
    """Load a ``.bin`` with ``weights_only=True`` first: pickled code is refused, never run."""
    import pickle

    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first = " ".join(str(exc).split())[:160]
        raise CheckpointError(
            f"{path}: refused: not a plain weights file (weights_only load failed: {first})"
        ) from None


def import_model(path: str | Path) -> Any:
    """A ``dyncli.checkpoint.Checkpoint`` from a Hugging Face CTC model directory."""
    import torch

    from dyncli.checkpoint import Checkpoint, nonfinite
    from dyncli.models.memory import check_fits
    from dyncli.models.wav2vec2 import Wav2Vec2CTC

    p = Path(path)
    cfg = _json(p, "config.json")
    arch = check_config(p, cfg)
    config = wav2vec2_config(p, cfg, arch)
    check_fits(config, str(p))  # before anything is built: an extreme config is refused here
    vocab = _vocab(p)
    _blank_of(p, cfg, vocab)
    safetensors = (p / "model.safetensors").is_file()
    if safetensors:
        _check_safetensors(p / "model.safetensors")
    else:
        _check_bin(p / "pytorch_model.bin")
    import transformers

    cls = getattr(transformers, arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hf = cls.from_pretrained(p, local_files_only=True, use_safetensors=safetensors).eval()
        except Exception as exc:  # transformers' many error types: one line naming the dir
            first = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"{p}: transformers could not load it ({first})") from None
    base = getattr(hf, ARCHITECTURES[arch])
    vocab_size = int(hf.lm_head.out_features)
    model = Wav2Vec2CTC(config, vocab_size)
    mapped = _map_weights(hf, base, model)
    left = sorted(set(hf.state_dict()) - mapped)
    if left:
        warnings.warn(f"{p}: left unmapped: {', '.join(left)}", stacklevel=2)
    tokenizer = _tokenizer(p, cfg, vocab, vocab_size)
    model.blank_id = tokenizer.blank_id
    found = nonfinite(model.state_dict().items())
    if found is not None:
        raise CheckpointError(
            f"{p}: refused: {found[1]} of {found[2]} weight tensors hold NaN or Inf values "
            f"(first: {found[0]})"
        )
    with torch.no_grad():
        model.eval()
    return Checkpoint(
        model=model,
        tokenizer=tokenizer,
        backbone="wav2vec2",
        config=config,
        provenance={
            "imported_from": str(p),
            "architecture": arch,
            "weights": WEIGHTS[0] if safetensors else WEIGHTS[1],
        },
        path=p,
    )


def _map_weights(hf: Any, base: Any, model: Any) -> set[str]:
    """Load each part of ``model`` from its Hugging Face counterpart; the HF state-dict names
    that were mapped."""
    kind = next(k for k in ("wav2vec2", "hubert", "wavlm") if hasattr(hf, k))
    prefix = f"{kind}."
    parts = {
        "feature_extractor": (base.feature_extractor, model.feature_extractor),
        "feature_projection": (base.feature_projection, model.feature_projection),
    }
    mapped: set[str] = set()
    for name, (src, dst) in parts.items():
        state = src.state_dict()
        _load(dst, state, f"{prefix}{name}")
        mapped |= {f"{prefix}{name}.{k}" for k in state}
    encoder = base.encoder.state_dict()
    hf_names = {f"{prefix}encoder.{k}" for k in encoder}
    if kind == "wavlm":  # q/k/v/out projections -> torchaudio's packed MultiheadAttention
        from torchaudio.models.wav2vec2.utils.import_huggingface import (
            transform_wavlm_encoder_state,
        )

        transform_wavlm_encoder_state(encoder, len(model.layers))
    routes = (("pos_conv_embed.", model.pos_conv_embed), ("layer_norm.", model.encoder_norm))
    for key_prefix, dst in routes:
        sub = {k[len(key_prefix) :]: v for k, v in encoder.items() if k.startswith(key_prefix)}
        _load(dst, sub, f"{prefix}encoder.{key_prefix}")
        mapped |= {f"{prefix}encoder.{key_prefix}{k}" for k in sub}
    layers = {k[len("layers.") :]: v for k, v in encoder.items() if k.startswith("layers.")}
    _load(model.layers, layers, f"{prefix}encoder.layers")
    mapped |= {n for n in hf_names if n.startswith(f"{prefix}encoder.layers.")}
    head = hf.lm_head.state_dict()
    _load(model.head, head, "lm_head")
    mapped |= {f"lm_head.{k}" for k in head}
    return mapped


def _load(module: Any, state: dict[str, Any], where: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        from dyncli.checkpoint import describe_mismatch

        found = describe_mismatch(module.state_dict(), state) or " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{where}: the weights do not fit dyncli's model: {found}") from None


def _vocab(path: Path) -> dict[str, int]:
    """``vocab.json`` as {token: id}, every id an integer >= 0."""
    vocab = _json(path, "vocab.json")
    if vocab and all(isinstance(v, dict) for v in vocab.values()):  # {lang: {token: id}}
        raise UsageError(f"{path}: a multi-lingual vocab.json is not supported")
    for token, i in vocab.items():
        if type(i) is not int or i < 0:
            raise CheckpointError(
                f"{path / 'vocab.json'}: token {token!r} has id {i!r}, not an integer >= 0"
            )
    return vocab


def _blank_of(path: Path, cfg: dict[str, Any], vocab: dict[str, int]) -> int:
    """The CTC blank: ``pad_token_id`` of config.json, else the tokenizer's pad token's id."""
    tok_cfg = _json(path, "tokenizer_config.json", required=False)
    pad = _token(tok_cfg.get("pad_token"), "<pad>")
    if "pad_token_id" in cfg and cfg["pad_token_id"] is None:
        raise CheckpointError(
            f"{path / 'config.json'}: 'pad_token_id' is null; set it to the id of the CTC "
            f"blank ({pad!r} is {vocab.get(pad, 'not')} in vocab.json)"
        )
    blank = cfg.get("pad_token_id", vocab.get(pad, 0))
    if type(blank) is not int or blank < 0:
        raise CheckpointError(
            f"{path / 'config.json'}: 'pad_token_id' is {blank!r}, not an integer >= 0"
        )
    return blank


def _tokenizer(path: Path, cfg: dict[str, Any], vocab: dict[str, int], vocab_size: int) -> Any:
    from dyncli.data.text import VocabTokenizer

    tokens = [""] * vocab_size
    for token, i in vocab.items():
        if not 0 <= i < vocab_size:
            raise CheckpointError(f"{path}/vocab.json: id {i} outside the head's {vocab_size}")
        tokens[i] = token
    extra = [i for i, t in enumerate(tokens) if not t]
    for i in extra:  # ids the head has but the vocabulary does not name (never decoded)
        tokens[i] = f"<unused{i}>"
    tok_cfg = _json(path, "tokenizer_config.json", required=False)
    blank = _blank_of(path, cfg, vocab)
    if blank >= vocab_size:
        raise CheckpointError(
            f"{path / 'config.json'}: 'pad_token_id' {blank} outside the head's {vocab_size}"
        )
    return VocabTokenizer(
        tokens,
        blank,
        word_delimiter=_token(tok_cfg.get("word_delimiter_token"), "|"),
        unk=_token(tok_cfg.get("unk_token"), "<unk>"),
        lower=bool(tok_cfg.get("do_lower_case", False)),
    )


def _token(value: Any, default: str) -> str:
    if isinstance(value, dict):  # an AddedToken serialised as a dict
        value = value.get("content")
    return str(value) if value else default


@hookimpl
def register_checkpoint_readers(register: Callable[[Any], None]) -> None:
    register(
        CheckpointReaderSpec(
            name="huggingface",
            accepts=accepts,
            read=import_model,
            description="Hugging Face Wav2Vec2ForCTC / HubertForCTC / WavLMForCTC directories",
            explain=explain,
        )
    )


@hookimpl
def register_commands(cli: Any) -> None:
    import typer

    @cli.command("import")
    def import_command(
        hf_dir: Path = typer.Argument(..., help="A Hugging Face CTC model directory."),
        output: Path = typer.Option(..., "--output", "-o", help="The dyncli checkpoint to write."),
    ) -> None:
        """Import a Hugging Face CTC model directory (Wav2Vec2ForCTC, HubertForCTC, WavLMForCTC)
        as a dyncli checkpoint."""
        from dyncli.checkpoint import save_checkpoint
        from dyncli.fileio import check_io, check_output_path

        check_output_path(output, "--output")
        check_io(inputs={"HF_DIR": hf_dir}, outputs={"--output": output})
        if not Path(hf_dir).is_dir() or not accepts(Path(hf_dir)):
            raise UsageError(f"{hf_dir}: not a model directory (config.json and weights)")
        ckpt = import_model(hf_dir)
        save_checkpoint(output, ckpt)
        typer.echo(
            f"imported {ckpt.provenance['architecture']} ({ckpt.model.num_layers} layers, "
            f"vocabulary {ckpt.tokenizer.vocab_size}, blank id {ckpt.model.blank_id}) -> {output}"
        )
