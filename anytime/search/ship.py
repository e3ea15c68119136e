"""The ship rule: when does a searched pyramid replace the shipped one (issue 23, docs/search.md)?

A candidate, trained with the full recipe on several seeds, ships only if all of these hold:

- on every seed, its last exit beats the baseline's mean last-exit AP by more than the margin;
- on every seed, no exit falls below the baseline's mean AP at that exit by more than the margin;
- on every seed, its exits are non-decreasing (an anytime model must not get worse by going deeper);
- each exit costs at most ``max_cost_ratio`` (10 %) more GMACs, and ONNX Runtime latency where measured, than the
  baseline's same exit, so that the serving numbers measured with the baseline still hold.

The margin is ``max(0.012, 2 x the re-training spread)``, the spread being the largest last-exit max - min over
the seeds of either model: a difference smaller than what re-training alone moves is not a difference. A model
with one seed measures no spread, which is why the rule wants two.

Pure data in, a verdict out (no files, no timing), so that the rule is tested on its own and the benchmark
``benchmarks/ship_rule.py`` only gathers the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_MARGIN = 0.012
MAX_COST_RATIO = 1.10


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Verdict:
    ships: bool
    margin: float
    checks: list[Check] = field(default_factory=list)

    def table(self) -> str:
        lines = ["| check | result | numbers |", "|---|---|---|"]
        lines += [f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.detail} |" for c in self.checks]
        lines.append(f"\nmargin {self.margin:.4f}; verdict: {'SHIPS' if self.ships else 'does not ship'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"ships": self.ships, "margin": self.margin,
                "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks]}


def spread(runs: list[list[float]]) -> float:
    """Last-exit AP max - min over seeds (0 for one seed)."""
    last = [r[-1] for r in runs]
    return max(last) - min(last)


def decide(candidate: list[list[float]], baseline: list[list[float]], candidate_gmacs: list[float],
           baseline_gmacs: list[float], candidate_ms: list[float] | None = None,
           baseline_ms: list[float] | None = None, min_margin: float = MIN_MARGIN,
           max_cost_ratio: float = MAX_COST_RATIO) -> Verdict:
    """The verdict for AP per exit per seed (``candidate[seed][exit]``), GMACs per exit, and optionally the
    latency per exit in ms (both models measured in one run)."""
    if not candidate or not baseline:
        raise ValueError("the ship rule needs at least one run of the candidate and of the baseline")
    exits = len(baseline[0])
    if any(len(r) != exits for r in candidate + baseline) or len(candidate_gmacs) != exits \
            or len(baseline_gmacs) != exits:
        raise ValueError(f"the candidate and the baseline must have the same exits ({exits})")
    margin = max(min_margin, 2 * max(spread(candidate), spread(baseline)))
    base_mean = [sum(r[k] for r in baseline) / len(baseline) for k in range(exits)]
    checks = []

    lasts = [r[-1] for r in candidate]
    checks.append(Check(
        f"last exit beats the baseline's mean by more than the margin, every seed ({len(candidate)})",
        all(a > base_mean[-1] + margin for a in lasts),
        f"{' / '.join(f'{a:.3f}' for a in lasts)} against {base_mean[-1]:.3f} + {margin:.3f}"))

    worst = min((r[k] - base_mean[k], k + 1) for r in candidate for k in range(exits))
    checks.append(Check("no exit below the baseline's by more than the margin", worst[0] >= -margin,
                        f"worst: exit {worst[1]}, {worst[0]:+.3f}"))

    falls = [(s, k + 1) for s, r in enumerate(candidate) for k in range(exits - 1) if r[k + 1] < r[k]]
    checks.append(Check("exits non-decreasing, every seed", not falls,
                        "yes" if not falls else ", ".join(f"seed {s}: exit {k + 1} < exit {k}" for s, k in falls)))

    ratios = [c / b for c, b in zip(candidate_gmacs, baseline_gmacs)]
    checks.append(Check(f"GMACs per exit at most x{max_cost_ratio:.2f}", max(ratios) <= max_cost_ratio,
                        " / ".join(f"x{r:.2f}" for r in ratios)))

    if candidate_ms is not None and baseline_ms is not None:
        ratios = [c / b for c, b in zip(candidate_ms, baseline_ms)]
        checks.append(Check(f"ONNX Runtime latency per exit at most x{max_cost_ratio:.2f}",
                            max(ratios) <= max_cost_ratio, " / ".join(f"x{r:.2f}" for r in ratios)))
    else:
        checks.append(Check("ONNX Runtime latency per exit", False, "not measured (--repositories)"))
    return Verdict(ships=all(c.passed for c in checks), margin=round(margin, 4), checks=checks)
