"""Which (input size, exit) options a repository serves: the frontier rule, the AP floor, names."""

import pytest

from anytime.options import Option, from_manifest, option_name, parse_option, report_candidates, select

# GMACs and AP of the shipped model's 12 candidates (anytime/assets/default_model.eval.json)
SHIPPED = {(128, 1): (0.076, 0.094), (128, 2): (0.094, 0.113), (128, 3): (0.111, 0.119), (128, 4): (0.128, 0.120),
           (256, 1): (0.305, 0.213), (256, 2): (0.374, 0.271), (256, 3): (0.444, 0.288), (256, 4): (0.513, 0.292),
           (384, 1): (0.687, 0.235), (384, 2): (0.842, 0.295), (384, 3): (0.998, 0.307), (384, 4): (1.154, 0.319)}


def candidates(table=SHIPPED):
    return [Option(s, e, f"anytime_exit{e}", g, ap) for (s, e), (g, ap) in table.items()]


def test_the_frontier_above_half_of_exit_1_and_every_exit_at_the_models_size():
    chosen = select(candidates(), default_size=256)
    names = [o.name for o in chosen]
    # 128/1 is below half of 256/1's AP; 384/1 is beaten by 256/2 (more AP for less compute)
    assert names == ["128/2", "128/3", "128/4", "256/1", "256/2", "256/3", "256/4", "384/2", "384/3", "384/4"]
    assert [o.gmacs for o in chosen] == sorted(o.gmacs for o in chosen)  # cheapest first
    assert chosen[-1].gmacs / chosen[0].gmacs > 6  # the span the issue asks for


def test_a_dominated_exit_at_the_models_size_is_still_served():
    table = dict(SHIPPED)
    table[(128, 4)] = (0.128, 0.25)  # now beats 256/1 (0.213 for 0.305 GMACs)
    names = [o.name for o in select(candidates(table), default_size=256)]
    assert "256/1" in names and "128/4" in names


def test_without_an_ap_for_every_candidate_only_the_models_size_is_served():
    table = dict(SHIPPED)
    table[(384, 4)] = (1.154, None)
    assert [o.name for o in select(candidates(table), default_size=256)] == ["256/1", "256/2", "256/3", "256/4"]
    with pytest.raises(ValueError):
        select([o for o in candidates() if o.image_size != 256], default_size=256)


def test_names_parse_and_old_manifests_serve_their_exits():
    assert option_name(128, 2) == "128/2" and parse_option(" 384/4 ") == (384, 4)
    for bad in ("128", "a/b", "128/0", "1/2/3"):
        with pytest.raises(ValueError):
            parse_option(bad)
    old = {"image_size": 256, "exits": [{"exit": 2, "model": "anytime_exit2", "gmacs": 0.4, "ap": 0.27},
                                        {"exit": 1, "model": "anytime_exit1", "gmacs": 0.3, "ap": 0.21}]}
    assert [o.name for o in from_manifest(old)] == ["256/1", "256/2"]
    new = {**old, "options": [o.to_dict() for o in select(candidates(), 256)]}
    assert from_manifest(new) == select(candidates(), 256)


def test_report_candidates_reads_every_size():
    report = {"exits": [{"exit": 1, "AP": 0.2}, {"exit": 2, "AP": 0.3}],
              "sizes": [{"image_size": 128, "exits": [{"exit": 1, "AP": 0.1}, {"exit": 2, "AP": 0.15}]}]}
    assert report_candidates(report, 256, [1, 2]) == {(256, 1): 0.2, (256, 2): 0.3, (128, 1): 0.1, (128, 2): 0.15}
    assert report_candidates(None, 256, [1, 2]) == {}
