"""The accuracy-vs-depth picture of an anytime model: AP and AP50 per exit."""

from __future__ import annotations

from pathlib import Path


def plot_ap_per_exit(report: dict, path: str | Path, title: str | None = None) -> Path:
    """Line plot of AP and AP50 (in %) against the exit number, written as PNG.

    Uses matplotlib's object API with the Agg canvas, so it never needs a display or touches pyplot state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report["exits"]
    exits = [r["exit"] for r in rows]
    fig = Figure(figsize=(5, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for metric, marker in (("AP", "o"), ("AP50", "s")):
        ax.plot(exits, [100 * (r[metric] or 0.0) for r in rows], marker=marker, label=metric)
    ax.set_xticks(exits)
    ax.set_xlabel("exit (pyramid networks run)")
    ax.set_ylabel("COCO AP (%)")
    ax.set_title(title or f"AP per exit ({report.get('num_images', '?')} images)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
