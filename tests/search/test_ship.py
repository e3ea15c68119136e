"""The ship rule on the numbers it was written for (docs/eval-reports/) and on constructed candidates."""

import pytest

from anytime.search.ship import decide

NASFPN = [[0.225, 0.274, 0.291, 0.296], [0.212, 0.258, 0.269, 0.270]]  # two seeds, full recipe
GMACS = [0.31, 0.37, 0.44, 0.51]
MS = [10.0, 12.0, 14.0, 16.0]
STRONG = [[0.30, 0.34, 0.35, 0.36], [0.29, 0.33, 0.345, 0.352]]


def failed(verdict) -> list[str]:
    return [c.name.split(",")[0].split(" (")[0] for c in verdict.checks if not c.passed]


def test_searched_cpu_does_not_ship_and_the_margin_is_twice_nasfpns_spread():
    v = decide([[0.173, 0.193, 0.200, 0.202]], NASFPN, [0.29, 0.34, 0.39, 0.45], GMACS, MS, MS)
    assert not v.ships and v.margin == pytest.approx(2 * (0.296 - 0.270))
    assert failed(v) == ["last exit beats the baseline's mean by more than the margin",
                         "no exit below the baseline's by more than the margin"]


def test_a_candidate_clear_of_the_margin_at_no_more_cost_ships():
    v = decide(STRONG, NASFPN, [g * 1.05 for g in GMACS], GMACS, [m * 1.08 for m in MS], MS)
    assert v.ships and failed(v) == []
    assert "SHIPS" in v.table() and v.to_dict()["ships"] is True


def test_each_rule_alone_stops_it():
    falling = [STRONG[0], [0.29, 0.33, 0.36, 0.352]]
    assert failed(decide(falling, NASFPN, GMACS, GMACS, MS, MS)) == ["exits non-decreasing"]
    assert failed(decide(STRONG, NASFPN, [g * 1.2 for g in GMACS], GMACS, MS, MS)) == ["GMACs per exit at most x1.10"]
    slow = [*MS[:3], MS[3] * 1.15]
    assert failed(decide(STRONG, NASFPN, GMACS, GMACS, slow, MS)) == ["ONNX Runtime latency per exit at most x1.10"]
    weak_first_exit = [[0.15, 0.34, 0.35, 0.36], STRONG[1]]
    assert failed(decide(weak_first_exit, NASFPN, GMACS, GMACS, MS, MS)) == [
        "no exit below the baseline's by more than the margin"]
    assert not decide(STRONG, NASFPN, GMACS, GMACS).ships  # latency unmeasured is not a pass


def test_the_margin_is_at_least_0_012_and_grows_with_the_candidates_own_spread():
    assert decide([STRONG[0]], [NASFPN[0]], GMACS, GMACS, MS, MS).margin == 0.012
    wide = [STRONG[0], [0.25, 0.26, 0.27, 0.28]]  # 0.08 apart at the last exit
    assert decide(wide, NASFPN, GMACS, GMACS, MS, MS).margin == pytest.approx(0.16)


def test_mismatched_exits_are_refused():
    with pytest.raises(ValueError, match="same exits"):
        decide([[0.3, 0.3, 0.3]], NASFPN, GMACS, GMACS)
    with pytest.raises(ValueError, match="at least one run"):
        decide([], NASFPN, GMACS, GMACS)
