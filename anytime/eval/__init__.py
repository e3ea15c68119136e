"""Evaluation: COCO AP of every exit of an anytime model, with per-exit results files and a plot.

The names below load on first use (``anytime.lazy``): the ``anytime`` command imports ``anytime.eval.cli`` to
build its parser, and the evaluation imports torch, pycocotools and matplotlib, which only scoring needs.
"""

from typing import TYPE_CHECKING

from anytime.lazy import lazy_exports

__all__ = ["evaluate", "coco_metrics", "format_table", "plot_ap_per_exit", "METRICS"]
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["evaluate", "coco_metrics", "format_table", "METRICS"], "anytime.eval.coco_eval"),
    "plot_ap_per_exit": "anytime.eval.plots",
})

if TYPE_CHECKING:
    from anytime.eval.coco_eval import METRICS, coco_metrics, evaluate, format_table
    from anytime.eval.plots import plot_ap_per_exit
