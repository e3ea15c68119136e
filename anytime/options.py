"""Serving options: (input size, exit) pairs of one model, and which of them a repository serves.

Shared vocabulary at the package root (like ``imaging``): the exporter selects options, the gateway schedules them,
the clients and benchmarks name them.

Depth alone gives this model little to trade (its four exits span 1.7x in compute at 256 px); input size is the other
axis (the paper's Table 3 and Figure 9 vary both). The same weights run at 128, 256 or 384 px
(``AnytimeRetinaNet.set_image_size``), so each (size, exit) is an option with its own cost and accuracy.

Which options are served (``select``):

- every exit at the model's own size, always: ``anytime_exit{k}`` keeps serving it to plain tritonclient users, and
  ``min_exit``/``max_exit`` and progressive execution address those exits;
- an option at another size only when it is on the accuracy-compute frontier (no other candidate is at least as
  accurate for no more compute, and better in one) and its AP is at least ``MIN_AP_FRACTION`` of the default size's
  first exit: a cheap option that answers with half the accuracy of today's cheapest is not an answer worth its
  budget.

The frontier is judged on GMACs, not on a latency measured at export: the selection must not depend on how busy the
exporting machine was. The gateway measures every served option's latency at start-up; ``benchmarks/options.py``
checks that the served options keep their order in measured latency.

Torch-free: the gateway reads options from the manifest with this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MIN_AP_FRACTION = 0.5


@dataclass(frozen=True)
class Option:
    image_size: int
    exit: int
    model: str  # the Triton model that serves it (exit k at every size: anytime_exit{k})
    gmacs: float | None = None
    ap: float | None = None

    @property
    def name(self) -> str:
        return option_name(self.image_size, self.exit)

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Option":
        return cls(image_size=int(d["image_size"]), exit=int(d["exit"]), model=str(d["model"]),
                   gmacs=None if d.get("gmacs") is None else float(d["gmacs"]),
                   ap=None if d.get("ap") is None else float(d["ap"]))


def option_name(image_size: int, exit: int) -> str:
    """``"128/2"``: size, then exit; what requests pin (``DetectRequest.option``) and tables print."""
    return f"{int(image_size)}/{int(exit)}"


def parse_option(text: str) -> tuple[int, int]:
    """``"128/2"`` -> (128, 2); ValueError with the expected form otherwise."""
    try:
        size, exit = (int(x) for x in str(text).strip().split("/"))
    except ValueError:
        raise ValueError(f"an option is SIZE/EXIT, such as 128/2; got {text!r}") from None
    if size < 1 or exit < 1:
        raise ValueError(f"an option's size and exit are positive; got {text!r}")
    return size, exit


def dominated(o: Option, others: list[Option]) -> bool:
    """Another option is at least as accurate for no more compute, and strictly better in one of the two."""
    return any(p is not o and p.gmacs <= o.gmacs and p.ap >= o.ap and (p.gmacs < o.gmacs or p.ap > o.ap)
               for p in others)


def select(candidates: list[Option], default_size: int, min_ap_fraction: float = MIN_AP_FRACTION) -> list[Option]:
    """The options to serve, cheapest first (see the module's docstring). Without an AP for every candidate no
    frontier can be judged: only the default size's exits are served."""
    default = sorted((o for o in candidates if o.image_size == default_size), key=lambda o: o.exit)
    if not default:
        raise ValueError(f"no candidate at the default size {default_size}")
    if any(o.ap is None or o.gmacs is None for o in candidates):
        return _cheapest_first(default)
    floor = min_ap_fraction * default[0].ap
    others = [o for o in candidates if o.image_size != default_size and o.ap >= floor and not dominated(o, candidates)]
    return _cheapest_first(default + others)


def _cheapest_first(options: list[Option]) -> list[Option]:
    return sorted(options, key=lambda o: (o.gmacs if o.gmacs is not None else 0.0, o.image_size, o.exit))


def from_manifest(manifest: dict) -> list[Option]:
    """The served options, cheapest first. A manifest from before options were exported serves its exits at its
    one size."""
    if manifest.get("options"):
        return _cheapest_first([Option.from_dict(d) for d in manifest["options"]])
    size = int(manifest["image_size"])
    return [Option(size, int(e["exit"]), e["model"], e.get("gmacs"), e.get("ap"))
            for e in sorted(manifest["exits"], key=lambda e: e["exit"])]


def sizes_of(options: list[Option]) -> list[int]:
    return sorted({o.image_size for o in options})


def report_candidates(report: dict | None, default_size: int, exits: list[int]) -> dict[tuple[int, int], float]:
    """{(size, exit): AP} from an ``anytime eval --sizes`` report (``report["sizes"]``); the default size also from
    its ``exits``. Empty without a report."""
    if not report:
        return {}
    out = {(default_size, int(e["exit"])): e.get("AP") for e in report.get("exits", []) if int(e["exit"]) in exits}
    for per_size in report.get("sizes") or []:
        for e in per_size.get("exits", []):
            if int(e["exit"]) in exits and e.get("AP") is not None:
                out[(int(per_size["image_size"]), int(e["exit"]))] = float(e["AP"])
    return {k: v for k, v in out.items() if v is not None}
