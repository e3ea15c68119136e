"""Parameters and multiply-adds needed to run up to each exit.

Multiply-adds are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a meta-device forward (no
memory, no compute): it counts convolutions and matrix products, which is what the paper's "multiply-adds"
column counts; it reports FLOPs = 2 x MACs, so we halve it. Element-wise ops, pooling, resampling and
post-processing (NMS) are not counted, as in the paper.

Two costs per exit, because serving can reach exit k two ways: the monolithic exit-k model computes only head k
(``gmacs``), while progressive execution that answers with every exit on the way computes heads 1..k
(``gmacs_every_exit``). Their ratio is the floor of progressive execution's overhead whatever the transport:
in RetinaNet the head, run on every level, costs more than a pyramid network.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from anytime.config import ModelConfig


def _unique_count(params) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def exit_costs(cfg: ModelConfig, every_exit: bool = True) -> dict:
    """{"exits": [{"exit", "params", "gmacs", "gmacs_every_exit"}], "params_total", "gmacs_all_exits", ...}
    for one image. ``every_exit=False`` leaves ``gmacs_every_exit`` out and saves its forward passes (export
    records only each exit's own cost)."""
    from anytime.model.retinanet import AnytimeRetinaNet

    with torch.device("meta"):
        model = AnytimeRetinaNet(cfg).eval()
        image = torch.zeros(1, 3, cfg.image_size, cfg.image_size)

    def gmacs(exits: list[int]) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.exit_outputs(image, exits)
        return counter.get_total_flops() / 2 / 1e9

    ks = list(range(1, model.num_exits + 1))
    exits = [{"exit": k, "params": _unique_count(model.parameters_for_exit(k)), "gmacs": gmacs([k])} for k in ks]
    all_exits = gmacs(ks)
    if every_exit:  # exit 1 alone and all exits together are already counted
        for e in exits:
            k = e["exit"]
            e["gmacs_every_exit"] = e["gmacs"] if k == 1 else all_exits if k == ks[-1] else gmacs(ks[:k])
    return {
        "config": cfg.to_dict(),
        "image_size": cfg.image_size,
        "exits": exits,
        "params_total": _unique_count(model.parameters()),
        "gmacs_all_exits": all_exits,
    }
