"""``dyncli inspect``: summarise a checkpoint."""

from __future__ import annotations

from typing import Any

from dyncli.cli.options import CheckpointArg, JsonOpt

NAME = "inspect"


def run(checkpoint: CheckpointArg, json_path: JsonOpt = None) -> None:
    """Print a checkpoint's architecture, size, tokenizer, method and provenance."""
    from rich.markup import escape
    from rich.table import Table

    from dyncli.checkpoint import summarize
    from dyncli.cli.output import print_table, write_json
    from dyncli.cli.paths import check_paths

    check_paths(
        inputs={"CHECKPOINT": checkpoint}, outputs={"--json": json_path}, streams=["--json"]
    )
    info = summarize(checkpoint)
    if json_path is not None:
        write_json(json_path, info)
        if str(json_path) == "-":
            return
    cfg = info["config"]
    # escape(): a '[/b]' or '[red]' in a path or a stored string is text, not rich markup
    table = Table(title=escape(f"dyncli inspect: {checkpoint}"), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("backbone", info["backbone"]),
        ("format version", "-" if info["format_version"] is None else str(info["format_version"])),
        ("parameters", f"{info['parameters'] / 1e6:.2f} M (stored as {info['stored_dtype']})"),
        ("layers", str(info["layers"])),
        (
            "width",
            f"d_model {cfg.get('d_model', cfg.get('encoder_embed_dim'))}, heads "
            f"{cfg.get('num_heads', cfg.get('encoder_num_heads'))}, ffn "
            f"{cfg.get('ffn_dim', cfg.get('encoder_ff_interm_features'))}",
        ),
        (
            "CTC heads",
            str(info["ctc_heads"])
            + (f" (exits after layers {info['exits']})" if info["exits"] else ""),
        ),
        ("tokenizer", f"{info['tokenizer']} ({info['vocab_size']} classes incl. blank)"),
        ("sample rate", f"{info['sample_rate']} Hz"),
        ("method", info["method"] + distilled(info["distillation"])),
        *record_rows(info["record"]),
        *method_rows(info),
        *pruned_rows(info["provenance"], info["layers"]),
        *imported_rows(info["provenance"]),
        (
            "operating point",
            ", ".join(f"{k}={v}" for k, v in (info["operating_point"] or {}).items()) or "-",
        ),
        (
            "metrics",
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in info["metrics"].items()
            )
            or "-",
        ),
        (
            "trained on",
            f"{info['provenance'].get('train_manifest', '-')} "
            f"(sha256 {str(info['provenance'].get('train_fingerprint', '-'))[:12]})",
        ),
        ("sha256", info["sha256"]),
    ]
    for k, v in rows:
        table.add_row(k, escape(v))
    print_table(table)


def distilled(record: dict[str, Any] | None) -> str:
    """', distilled: factorized-kd (teacher: self)' for a distilled checkpoint, else ''."""
    if not record:
        return ""
    teacher = record.get("teacher") or {}
    kind = teacher.get("kind")
    who = "its own full depth" if kind == "self" else teacher.get("path") or kind or "?"
    return f", distilled: {record.get('method', '?')} (teacher: {who})"


def pruned_rows(provenance: dict[str, Any], layers: int) -> list[tuple[str, str]]:
    """For a model made by ``dyncli prune``: which layers of the original it kept."""
    kept = provenance.get("kept_layers")
    if not kept:
        return []
    rounds = provenance.get("prune_rounds") or []
    removed = ", ".join(str(r["removed"] + 1) for r in rounds)
    return [
        (
            "pruned",
            f"{layers} layers kept of {len(kept) + len(rounds)}: {[i + 1 for i in kept]} "
            f"(removed in order: {removed}) from {provenance.get('pruned_from', '?')}",
        )
    ]


def imported_rows(provenance: dict[str, Any]) -> list[tuple[str, str]]:
    """For a model read from a foreign format (a plugin's checkpoint reader): from where."""
    source = provenance.get("imported_from")
    if not source:
        return []
    what = provenance.get("architecture", "?")
    weights = provenance.get("weights")
    return [("imported", f"{what} from {source}" + (f" ({weights})" if weights else ""))]


def method_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows the checkpoint's method gives for its own part of the record (its spec's
    ``rows``: the gates' predictor and open rates, a plugin's settings, ...)."""
    from dyncli.registry.manager import methods

    spec = methods().get(info["method"])
    name = info["method"]
    if spec is None or not isinstance(info.get(name), dict):
        return []
    return spec.rows({"name": name, name: info[name]})


def record_rows(record: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The method record's settings (how the model was trained, what it runs by default);
    the operating point, the distillation and the method's own part have rows of their own."""
    if not record:
        return []
    shown = {
        k: v
        for k, v in record.items()
        if k not in ("name", "exits", "operating_point", "distillation", record.get("name"))
        and v not in (None, [], {})
    }
    text = ", ".join(f"{k}={v}" for k, v in shown.items())
    return [("record", text)] if text else []
