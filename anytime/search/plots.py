"""The search's figures: the paper's Figure 5 (reward over the search, unique architectures) and Figure 7
(architectures drawn with the levels as rows and the merging cells as nodes).

matplotlib's object API on the Agg canvas: no display, no pyplot state (as ``anytime.eval.plots``).
"""

from __future__ import annotations

from pathlib import Path

LEVEL_COLOURS = {3: "#4c72b0", 4: "#55a868", 5: "#c44e52", 6: "#8172b2", 7: "#ccb974"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_rewards(records: list[dict], path: str | Path, title: str = "", window: int = 8) -> Path:
    """Figure 5 (left): each trial's reward by step, the running mean of the last ``window``, the best so far."""
    records = sorted(records, key=lambda r: r["step"])
    steps = [r["step"] for r in records]
    rewards = [r["reward"] for r in records]
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    ok = [(s, r) for s, r, rec in zip(steps, rewards, records) if rec["status"] != "failed"]
    bad = [(s, r) for s, r, rec in zip(steps, rewards, records) if rec["status"] == "failed"]
    if ok:
        ax.scatter(*zip(*ok), s=12, alpha=0.6, label="reward of a sampled architecture")
    if bad:
        ax.scatter(*zip(*bad), s=20, marker="x", color="red", label="failed trial")
    mean = [sum(rewards[max(0, i - window + 1): i + 1]) / len(rewards[max(0, i - window + 1): i + 1])
            for i in range(len(rewards))]
    ax.plot(steps, mean, color="black", lw=1.5, label=f"running mean ({window})")
    ax.plot(steps, _best_so_far(records), color="tab:green", lw=1.5, drawstyle="steps-post", label="best so far")
    return _save_reward_axes(fig, ax, path, "step (sampled architecture)", title or "reward over the search")


def _best_so_far(records: list[dict]) -> list[float | None]:
    """The best reward up to each record (in the order given); failed trials do not count (None before any)."""
    best, top = [], None
    for rec in records:
        if rec["status"] != "failed":
            top = rec["reward"] if top is None else max(top, rec["reward"])
        best.append(top)
    return best


def _save_reward_axes(fig, ax, path, xlabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reward (proxy AP)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_unique(keys: list, path: str | Path, title: str = "") -> Path:
    """Figure 5 (right): unique architectures against sampled architectures (``keys``: canonical, by step)."""
    seen, unique = set(), []
    for k in keys:
        seen.add(k)
        unique.append(len(seen))
    n = list(range(1, len(keys) + 1))
    fig = _figure(4.8, 3.8)
    ax = fig.add_subplot()
    ax.plot(n, n, color="grey", ls="--", lw=1, label="all unique")
    ax.plot(n, unique, lw=2, label="unique architectures")
    ax.set_xlabel("sampled architectures")
    ax.set_ylabel("unique architectures")
    ax.set_title(title or "unique architectures")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def draw_architectures(specs: list, path: str | Path, titles: list[str] | None = None) -> Path:
    """Figure 7: one panel per ``PyramidSpec``. Rows are levels (P3 at the bottom), the inputs sit in the left
    column and every merging cell in its own column, in order. A cell is a node marked ``+`` (sum) or ``GP``
    (global pooling); output cells are filled and labelled with their level; arrows are the cell's two inputs,
    dashed arrows the unused features the model sums into an output of their level.
    """
    from matplotlib.patches import FancyArrowPatch

    from anytime.model.pyramid import PyramidNetwork

    titles = titles or [s.name for s in specs]
    width = max(len(s.cells) for s in specs) + 2
    fig = _figure(1.0 + 0.75 * width, 0.4 + 2.9 * len(specs))
    for row, (spec, title) in enumerate(zip(specs, titles)):
        ax = fig.add_subplot(len(specs), 1, row + 1)
        levels = list(spec.levels)
        node_levels = spec.node_levels()
        n_in = len(levels)
        xy = [(0.0, levels.index(lv)) for lv in levels]
        xy += [(1.0 + i, levels.index(c.level)) for i, c in enumerate(spec.cells)]
        # The model's own rule for unused features (anytime.model.pyramid), so the drawing cannot disagree.
        unused = PyramidNetwork(spec, channels=8).unused_into

        def arrow(a: int, b: int, dashed: bool = False):
            (x0, y0), (x1, y1) = xy[a], xy[b]
            # Two nodes on one row with nodes between them: an arc past those nodes, bowing towards the middle
            # rows and never more than about half a row high.
            rad = 0.0
            if y0 == y1 and x1 - x0 > 1:
                rad = min(0.35, 1.0 / (x1 - x0)) * (1 if y0 >= (len(levels) - 1) / 2 else -1)
            ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=9,
                                         connectionstyle=f"arc3,rad={rad}", shrinkA=11, shrinkB=11,
                                         lw=1.0, ls="--" if dashed else "-", color="0.35", zorder=1))

        for i, c in enumerate(spec.cells):
            for x in c.inputs:
                arrow(x, n_in + i)
            for x in unused[i]:
                arrow(x, n_in + i, dashed=True)
        for j, (x, y) in enumerate(xy):
            level = node_levels[j]
            colour = LEVEL_COLOURS.get(level, "0.6")
            if j < n_in:
                ax.scatter([x], [y], s=380, marker="s", color="white", edgecolors=colour, linewidths=2, zorder=2)
                ax.text(x, y, f"P{level}", ha="center", va="center", fontsize=7, zorder=3)
                continue
            cell = spec.cells[j - n_in]
            ax.scatter([x], [y], s=380, color=colour if cell.output else "white", edgecolors=colour,
                       linewidths=2, zorder=2)
            ax.text(x, y, "+" if cell.op == "sum" else "GP", ha="center", va="center", fontsize=8,
                    color="white" if cell.output else "black", fontweight="bold", zorder=3)
            if cell.output:
                ax.text(x, y - 0.42, f"out P{level}", ha="center", va="top", fontsize=6)
        ax.set_yticks(range(len(levels)), [f"P{lv}" for lv in levels])
        ax.set_xticks([0] + [1 + i for i in range(len(spec.cells))], ["in"] + [str(n_in + i) for i in range(len(spec.cells))])
        ax.set_xlim(-0.6, width - 0.4)
        ax.set_ylim(-0.8, len(levels) - 0.4)
        ax.set_title(title, fontsize=9)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_best_so_far(searches: dict[str, list[dict]], path: str | Path, references: dict[str, float] | None = None,
                     title: str = "") -> Path:
    """Searches side by side: each one's best reward so far by step (failed trials do not count), with
    reference architectures on the same proxy (e.g. NAS-FPN, FPN) as horizontal lines."""
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    for k, (label, records) in enumerate(searches.items()):
        records = sorted(records, key=lambda r: r["step"])
        ax.plot([r["step"] + 1 for r in records], _best_so_far(records), lw=2, drawstyle="steps-post", color=f"C{k}",
                label=f"{label}: best so far")
        ax.scatter([r["step"] + 1 for r in records], [r["reward"] for r in records], s=8, alpha=0.35, color=f"C{k}")
    for i, (label, value) in enumerate((references or {}).items()):
        ax.axhline(value, color="grey", ls=("--", ":", "-.")[i % 3], lw=1, label=f"{label} ({value:.4f})")
    return _save_reward_axes(fig, ax, path, "trials", title or "best reward so far")
