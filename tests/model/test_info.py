"""Fidelity to the paper's Table 1, measured the way users measure it: ``anytime info PRESET --json``."""

import json

import pytest

from anytime.cli import main

# (preset, paper params, paper multiply-adds) for 640x640 inputs and 90 COCO classes
TABLE_1 = [("r50-nasfpn-7@256", 60.3e6, 140.6), ("r50-fpn@256", 34.0e6, 97.0)]


@pytest.mark.parametrize("preset, params, gmacs", TABLE_1)
def test_presets_match_table_1(preset, params, gmacs, capsys):
    assert main(["info", preset, "--image-size", "640", "--num-classes", "90", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert abs(info["params_total"] / params - 1) < 0.01
    assert abs(info["exits"][-1]["gmacs"] / gmacs - 1) < 0.05
    assert [e["exit"] for e in info["exits"]] == list(range(1, len(info["exits"]) + 1))
    costs = [e["gmacs"] for e in info["exits"]]
    assert costs == sorted(costs)


def test_info_overrides_and_text_output(capsys):
    assert main(["info", "r50-nasfpn-7@256", "--backbone", "resnet18", "--repeats", "2", "--width", "64",
                 "--image-size", "256", "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    assert "resnet18 + nasfpn 2 @ 64, 5 classes, 256x256" in out
    assert out.count("\n") >= 4


def test_info_bad_input_is_a_clear_error(capsys):
    assert main(["info", "--image-size", "100"]) == 2
    assert "cannot be divided by the pyramid" in capsys.readouterr().err
    assert main(["info", "--backbone", "vgg"]) == 2
    assert "unknown backbone 'vgg'" in capsys.readouterr().err


def test_every_exit_on_the_way_adds_one_head_per_earlier_exit(capsys):
    """Progressive execution that answers at every exit pays head j for every j < k on top of the exit-k model:
    the same head cost each time (the heads see the same levels and widths), and all of them at the last exit."""
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    exits = info["exits"]
    head = exits[1]["gmacs_every_exit"] - exits[1]["gmacs"]
    assert head > 0
    assert exits[0]["gmacs_every_exit"] == pytest.approx(exits[0]["gmacs"])
    for j, e in enumerate(exits):
        assert e["gmacs_every_exit"] - e["gmacs"] == pytest.approx(j * head, rel=1e-6)
    assert exits[-1]["gmacs_every_exit"] == pytest.approx(info["gmacs_all_exits"])
