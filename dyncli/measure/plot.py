"""``dyncli profile --plot FILE.png``: WER against speedup and against executed FLOPs (PNG, or
the format the file's extension names: .pdf, .svg, ...).

One marker style per method (policy, or policy on another model with ``--models``), each
panel's Pareto front (WER against that panel's axis) joined by a line, and the static point and the
stored operating point labelled. matplotlib is an optional extra (``pip install dyncli[plot]``);
without it the command fails with a one-line hint before any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from dyncli.errors import UsageError
from dyncli.fileio import atomic_write

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def require_matplotlib() -> None:
    """Fail early, with the install hint, when the plot extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, the optional plot extra: pip install 'dyncli[plot]'"
        ) from None


# What --plot writes, by extension: matplotlib's own formats, less pgf (needs LaTeX) and raw
# pixel dumps (raw, rgba: no header, not an image file a viewer opens).
FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")


def plot_format(path: str | Path) -> str:
    """The file format ``path``'s extension names (``p.pdf`` -> ``pdf``); an extension that is
    missing or not one of :data:`FORMATS` this matplotlib writes is a one-line error."""
    require_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    supported = [f for f in FORMATS if f in FigureCanvasBase.get_supported_filetypes()]
    fmt = Path(path).suffix.lower().removeprefix(".")
    if fmt not in supported:
        got = f"extension '.{fmt}'" if fmt else "no extension"
        raise UsageError(
            f"--plot {path}: {got}; name the file after its format: .{', .'.join(supported)}"
        )
    return fmt


def method_of(row: dict[str, Any]) -> str:
    """The legend entry of a row: its policy (``full depth`` for a static row), and the model
    it ran on when the report has several (``--models``)."""
    name = "full depth" if row["threshold"] is None else str(row["policy"])
    model = row.get("model")
    return f"{name} ({model})" if model else name


def _literal(text: str) -> str:
    """``text`` as matplotlib draws it literally: a ``$`` pair in a file name (``x$\\frac$.ckpt``)
    is otherwise parsed as math, and a bad formula fails the plot after the whole profile ran."""
    return text.replace("$", r"\$")


def _front(rows: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows no other row beats on WER and on ``key`` (speedup: higher is better; FLOPs: lower)."""
    sign = -1.0 if key == "speedup" else 1.0

    def beats(o: dict[str, Any], r: dict[str, Any]) -> bool:
        a, b = sign * o[key], sign * r[key]
        return o["wer"] <= r["wer"] and a <= b and (o["wer"] < r["wer"] or a < b)

    return [r for r in rows if not any(beats(o, r) for o in rows if o is not r)]


def plot_report(report: Any, path: str | Path) -> None:
    """Draw ``report`` (a :class:`dyncli.measure.report.ProfileReport`) to ``path``, in the format
    its extension names (:func:`plot_format`)."""
    fmt = plot_format(path)
    import io

    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    static = report.static.to_json()
    rows: Sequence[dict[str, Any]] = [row.to_json() for row in report.rows]
    colors = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, key, label in (
        (axes[0], "speedup", "speedup vs static (end to end, measured)"),
        (axes[1], "flops_ratio", "executed FLOPs / static"),
    ):
        methods: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            methods.setdefault(method_of(row), []).append(row)
        for i, (name, found) in enumerate(sorted(methods.items())):
            ax.scatter(
                [r[key] for r in found],
                [100 * r["wer"] for r in found],
                marker=MARKERS[i % len(MARKERS)],
                color=colors(i % 20),  # 20 colours x 10 markers: no two methods look alike
                label=_literal(name),
                alpha=0.8,
            )
        front = sorted(_front([static, *rows], key), key=lambda r: r[key])
        if len(front) > 1:
            ax.plot(
                [r[key] for r in front],
                [100 * r["wer"] for r in front],
                color="black",
                linewidth=1,
                label="Pareto front",
            )
        ax.scatter([static[key]], [100 * static["wer"]], marker="*", s=160, color="black")
        ax.annotate(
            "static", (static[key], 100 * static["wer"]), xytext=(5, 5), textcoords="offset points"
        )
        for row in rows:
            if row.get("stored_operating_point"):
                ax.annotate(
                    _literal(f"stored point ({row['policy']} @ {row['threshold']:g})"),
                    (row[key], 100 * row["wer"]),
                    xytext=(5, -12),
                    textcoords="offset points",
                )
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("WER %")
    axes[1].invert_xaxis()  # fewer FLOPs to the right, like more speedup on the left plot
    axes[0].legend(fontsize=8, loc="best")
    env = report.environment
    fig.suptitle(
        _literal(
            f"{Path(report.model['path']).name} on {Path(report.data['path']).name}: "
            f"{env['threads']} thread(s), batch size {report.timing['batch_size']}"
        ),
        fontsize=10,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    plt.close(fig)
    data = buf.getvalue()

    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    atomic_write(path, write)
