"""The paper's Figure 8a in miniature: AP against the number of pyramid networks and against multiply-adds, for
several models (e.g. stacked FPN and NAS-FPN).

Each model is a line through its exits. What it shows is therefore not quite the paper's figure: the paper trains
one model per depth, and here the points of a line are the exits of *one* deeply supervised model, whose early
exits share weights with (and are trained for) the later ones. Models trained with fewer pyramids (one model per
depth, as in the paper) can be added; each is a line of its own, its last point the paper's kind of point, and
where a pyramid has models of two depths or more a dotted line joins their last exits: that line is the paper's.
"""

from __future__ import annotations

import json
from pathlib import Path


def model_point_set(source: str | Path, data: str | None = None, label: str | None = None) -> dict:
    """{"label", "pyramid", "repeats", "exits": [{"exit", "AP", "gmacs"}]} of a checkpoint (evaluated here) or of
    an ``anytime eval --json`` report: its ``model`` config, or for reports older than that field the checkpoint
    it names (read for the configuration only)."""
    from anytime.config import ModelConfig
    from anytime.eval.cli import evaluate_checkpoint
    from anytime.model.complexity import exit_costs
    from anytime.train.checkpoint import load_model

    source = Path(source)
    if source.suffix == ".json":
        report = json.loads(source.read_text())
        if "model" in report:
            cfg = ModelConfig.of_trained(report["model"]).validate()
        else:
            cfg = load_model(report["checkpoint"])[0].cfg
    else:
        model, report = evaluate_checkpoint(source, data, progress=False)
        cfg = model.cfg
    costs = {e["exit"]: e["gmacs"] for e in exit_costs(cfg, every_exit=False)["exits"]}
    pyramid = Path(cfg.pyramid).stem
    return {"label": label or pyramid, "pyramid": pyramid, "repeats": cfg.num_exits, "source": str(source),
            "exits": [{"exit": r["exit"], "AP": r["AP"], "gmacs": round(costs[r["exit"]], 4)}
                      for r in report["exits"]]}


def per_depth(models: list[dict]) -> dict[str, list[dict]]:
    """pyramid -> [{"repeats", "AP", "gmacs", "runs"}] by depth: the last exit of each model trained with that
    many pyramids, several runs (seeds) averaged. This is the paper's Figure 8a point, one model per depth; only
    pyramids with models of two depths or more form a line."""
    by: dict[str, dict[int, list[dict]]] = {}
    for m in models:
        by.setdefault(m["pyramid"], {}).setdefault(m["repeats"], []).append(m["exits"][-1])
    lines = {}
    for pyramid, depths in by.items():
        if len(depths) < 2:
            continue
        lines[pyramid] = [{"repeats": r, "AP": round(sum(e["AP"] for e in last) / len(last), 4),
                           "gmacs": round(sum(e["gmacs"] for e in last) / len(last), 4), "runs": len(last)}
                          for r, last in sorted(depths.items())]
    return lines


def plot_scaling(models: list[dict], path: str | Path) -> Path:
    """Two panels, AP against pyramid networks run and against GMACs; one colour per pyramid architecture, one
    line per model (another run of the same pyramid with another marker; a model with fewer pyramids dashed),
    and a dotted line per pyramid through the last exits of its models of each depth (``per_depth``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    colours = {p: f"C{i}" for i, p in enumerate(dict.fromkeys(m["pyramid"] for m in models))}
    deepest = max(m["repeats"] for m in models)
    seen: dict[str, int] = {}
    for m in models:
        k = seen[m["pyramid"]] = seen.get(m["pyramid"], -1) + 1  # another run of the same pyramid: another marker
        style = dict(color=colours[m["pyramid"]], marker="osD^v"[k % 5], ls="-" if m["repeats"] == deepest else "--",
                     alpha=1.0 if k == 0 else 0.7, label=f"{m['label']} ({m['repeats']} pyramids)")
        ap = [100 * e["AP"] for e in m["exits"]]
        axes[0].plot([e["exit"] for e in m["exits"]], ap, **style)
        axes[1].plot([e["gmacs"] for e in m["exits"]], ap, **style)
    for pyramid, points in per_depth(models).items():
        style = dict(color=colours[pyramid], marker="*", markersize=11, ls=":", lw=2.5,
                     label=f"{pyramid}: one model per depth (last exits)")
        ap = [100 * p["AP"] for p in points]
        axes[0].plot([p["repeats"] for p in points], ap, **style)
        axes[1].plot([p["gmacs"] for p in points], ap, **style)
    axes[0].set_xlabel("pyramid networks run (exit)")
    axes[0].set_xticks(range(1, deepest + 1))
    axes[1].set_xlabel("GMACs per image")
    axes[0].set_ylabel("COCO AP (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    # Below both panels, not inside one: with several models per pyramid a legend inside covers the curves. The
    # constrained layout makes room for it, however many rows it takes.
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize="small",
               frameon=False)
    fig.suptitle("AP against depth (the paper's Figure 8a in miniature)\na solid or dashed line is the exits of one "
                 "deeply supervised model; a dotted one joins models trained at each depth", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
