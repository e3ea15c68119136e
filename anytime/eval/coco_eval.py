"""COCO-style evaluation of every exit: one detect() call per batch serves all exits, pycocotools scores them."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch

from anytime.imaging import boxes_to_original

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six numbers of COCOeval.stats


def coco_metrics(coco_gt, results: list[dict], image_ids: list[int] | None = None) -> dict[str, float | None]:
    """COCOeval (bbox) of detections in COCO results format; silent. No detections give AP 0.

    A metric COCO cannot define (e.g. APs when no ground-truth box is small) is None rather than -1.
    """
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {m: 0.0 for m in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {m: (float(v) if v >= 0 else None) for m, v in zip(METRICS, ev.stats[: len(METRICS)])}


def to_coco_results(detections: dict, target: dict, cat_ids: list[int]) -> list[dict]:
    """One image's detections (network pixels, contiguous labels) as COCO results (original pixels, xywh)."""
    h, w = target["orig_size"]
    boxes, keep = boxes_to_original(detections["boxes"].detach().float().cpu(), float(target["scale"]), h, w)
    boxes = boxes[keep]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
    scores, labels = detections["scores"].cpu()[keep], detections["labels"].cpu()[keep]
    return [
        {"image_id": int(target["image_id"]), "category_id": int(cat_ids[int(label)]),
         "bbox": [round(float(v), 2) for v in box], "score": round(float(score), 5)}
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist())
    ]


@torch.no_grad()
def evaluate(model, dataset, exits: list[int] | None = None, batch_size: int = 8, progress: bool = True,
             out_dir: str | Path | None = None, cat_ids: list[int] | None = None, num_workers: int = 0) -> dict:
    """AP, AP50, AP75, APs/m/l of each exit on ``dataset`` (a CocoDetection with the eval transform).

    ``cat_ids`` maps the model's labels to COCO category ids (default: the dataset's). With ``out_dir``, writes
    results_exit{k}.json per exit and ap_per_exit.png there.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from anytime.data.coco import collate

    exits = sorted(exits or range(1, model.num_exits + 1))
    cat_ids = list(cat_ids if cat_ids is not None else dataset.cat_ids)
    device = next(model.parameters()).device
    model.eval()
    results: dict[int, list[dict]] = {k: [] for k in exits}
    image_ids: list[int] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    for images, targets in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True):
        detections = model.detect(images.to(device), exits)
        for i, target in enumerate(targets):
            image_ids.append(int(target["image_id"]))
            for k in exits:
                results[k] += to_coco_results(detections[k][i], target, cat_ids)

    report = {"num_images": len(image_ids), "exits": []}
    for k in exits:
        report["exits"].append({"exit": k, **coco_metrics(dataset.coco, results[k], image_ids),
                                "detections": len(results[k])})
    if out_dir is not None:
        from anytime.eval.plots import plot_ap_per_exit

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for k in exits:
            (out / f"results_exit{k}.json").write_text(json.dumps(results[k]))
        plot_ap_per_exit(report, out / "ap_per_exit.png")
    return report


def format_table(report: dict) -> str:
    """A fixed-width table of the metrics, one row per exit."""
    cols = ("exit",) + METRICS + ("detections",)
    lines = ["  ".join(f"{c:>10}" for c in cols)]
    for row in report["exits"]:
        cells = [f"{row['exit']:>10}"]
        cells += [f"{row[m] * 100:>10.2f}" if row[m] is not None else f"{'-':>10}" for m in METRICS]
        cells.append(f"{row['detections']:>10}")
        lines.append("  ".join(cells))
    return "\n".join(lines)
