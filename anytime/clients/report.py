"""What ``loadgen`` found, for people: a text table and two plots (matplotlib's Agg canvas, no display needed)."""

from __future__ import annotations

from pathlib import Path


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _ap(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _used(setting: dict) -> dict:
    """What answered: options ("SIZE/EXIT") when the gateway named the size, else exits."""
    options = setting.get("options") or {}
    return options if options and not any(k.startswith("0/") for k in options) else setting["exits"]


def format_table(report: dict) -> str:
    """One row per setting (statuses, budget met, latency, AP), then the AP of each exit on the images it answered."""
    settings = report["settings"]
    codes = sorted({c for s in settings for c in s["status"]}, key=lambda c: (c != "OK", c))
    short = {"OK": "ok", "DEADLINE_EXCEEDED": "deadline", "RESOURCE_EXHAUSTED": "shed", "UNAVAILABLE": "unavail"}
    header = (["budget ms", "rate/s", "sent"] + [short.get(c, c.lower()) for c in codes]
              + ["late", "refused at once", "met %", "p50 ms", "p95 ms", "p99 ms", "AP", "AP50", "used (SIZE/EXIT or exit)"])
    rows = []
    for s in settings:
        lat = s["latency_ms"]
        rows.append([s["budget"], f"{s['rate']:g}", str(s["requests"])] + [str(s["status"].get(c, 0)) for c in codes]
                    + [str(s.get("late", 0)), str(s.get("refused_at_once", "-")), f"{100 * s['budget_met_rate']:.1f}", _ms(lat["p50"]), _ms(lat["p95"]), _ms(lat["p99"]),
                       _ap(s["AP"]), _ap(s["AP50"]),
                       " ".join(f"{e}:{c}" for e, c in _used(s).items()) or "-"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:  # numbers right-aligned; the last, free-form column left as it is
        return "  ".join(c if i == len(cells) - 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [f"{report['requests']} requests per setting against {report['server']} ({report['split']} split of "
             f"{report['data']}); met = answered within budget on the client's clock (late answers are OK but "
             "missed); AP in %, over every image sent, from answers that met their budget",
             line(header), line(["-" * w for w in widths])]
    lines += [line(r) for r in rows]
    per_exit = [(s, e, m) for s in settings for e, m in s["ap_per_exit"].items()]
    if per_exit:
        lines.append("")
        lines.append("AP per exit or option used (on the images it answered):")
        for s, e, m in per_exit:
            what = f"option {e}" if "/" in e else f"exit {e}"
            lines.append(f"  budget {s['budget']} ms @ {s['rate']:g}/s  {what:>12}: {m['images']:>4} images  "
                         f"AP {_ap(m['AP'])}  AP50 {_ap(m['AP50'])}")
    return "\n".join(lines)


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_ap_vs_budget(report: dict, path: str | Path) -> Path:
    """AP (solid) and AP50 (dashed) against the fixed budget, one colour per rate; budget-met rate below."""
    fig = _figure((6, 6))
    ax_ap, ax_met = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    rates = sorted({s["rate"] for s in report["settings"]})
    peers = report.get("peers") or []
    for k, rate in enumerate(rates):
        rows = sorted((s for s in report["settings"] if s["rate"] == rate and s["budget_ms"] is not None),
                      key=lambda s: s["budget_ms"])
        x = [s["budget_ms"] for s in rows]
        colour = f"C{k}"
        ax_ap.plot(x, [100 * (s["AP"] or 0) for s in rows], marker="o", color=colour, label=f"{rate:g} req/s AP")
        if not peers:
            ax_ap.plot(x, [100 * (s["AP50"] or 0) for s in rows], marker="s", ls="--", color=colour, alpha=0.6,
                       label=f"{rate:g} req/s AP50")
        ax_met.plot(x, [100 * s["budget_met_rate"] for s in rows], marker="o", color=colour, label=f"{rate:g} req/s")
    # the simplest peers (Triton called directly with one fixed exit) on the same traces: grey, one marker each
    for k, way in enumerate(sorted({p["way"] for p in peers})):
        rows = sorted((p for p in peers if p["way"] == way and p["budget_ms"] is not None), key=lambda p: p["budget_ms"])
        style = dict(color=f"{0.15 + 0.3 * k:.2f}", ls=":", marker="^v<>"[k % 4])
        ax_ap.plot([p["budget_ms"] for p in rows], [100 * (p["AP"] or 0) for p in rows], label=f"{way} AP", **style)
        ax_met.plot([p["budget_ms"] for p in rows], [100 * p["budget_met_rate"] for p in rows], label=way, **style)
    ax_ap.set_ylabel("COCO AP (%)")
    ax_ap.set_title(f"Accuracy within budget ({report['requests']} requests per point)")
    ax_ap.legend(fontsize="small")
    ax_met.set_ylabel("budget met (%)")
    ax_met.set_ylim(-5, 105)
    ax_met.set_xlabel("latency budget (ms)")
    if peers:
        ax_met.legend(fontsize="small")
    budgets = [s["budget_ms"] for s in report["settings"] if s["budget_ms"] is not None]
    if budgets and max(budgets) / min(budgets) > 20:  # e.g. 1 ms to 1 s: linear would squash the small ones
        ax_met.set_xscale("log")
    for ax in (ax_ap, ax_met):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_exit_histogram(report: dict, path: str | Path) -> Path:
    """Per setting, the share of requests answered by each exit, failed ones stacked on top in grey."""
    settings = report["settings"]
    exits = sorted({int(e) for s in settings for e in s["exits"]})
    labels = [f"{s['budget']} ms\n{s['rate']:g}/s" for s in settings]
    fig = _figure((max(4.0, 1.0 + 0.9 * len(settings)), 4))
    ax = fig.add_subplot()
    bottom = [0.0] * len(settings)
    for k, e in enumerate(exits):
        share = [100 * s["exits"].get(str(e), 0) / s["requests"] for s in settings]
        ax.bar(labels, share, bottom=bottom, color=f"C{k}", label=f"exit {e}")
        bottom = [b + v for b, v in zip(bottom, share)]
    failed = [100 * (s["requests"] - s["ok"]) / s["requests"] for s in settings]
    ax.bar(labels, failed, bottom=bottom, color="0.75", hatch="//", label="failed")
    ax.set_ylabel("requests (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Exit used per setting")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.tick_params(axis="x", labelsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def write_plots(report: dict, out: str | Path) -> list[Path]:
    """``exit_histogram.png`` always; ``ap_vs_budget.png`` when the settings span several fixed budgets."""
    out = Path(out)
    paths = [plot_exit_histogram(report, out / "exit_histogram.png")]
    if len({s["budget_ms"] for s in report["settings"] if s["budget_ms"] is not None}) > 1:
        paths.append(plot_ap_vs_budget(report, out / "ap_vs_budget.png"))
    return paths
