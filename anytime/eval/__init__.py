"""Evaluation: COCO AP of every exit of an anytime model, with per-exit results files and a plot."""

from anytime.eval.coco_eval import METRICS, coco_metrics, evaluate, format_table
from anytime.eval.plots import plot_ap_per_exit

__all__ = ["evaluate", "coco_metrics", "format_table", "plot_ap_per_exit", "METRICS"]
