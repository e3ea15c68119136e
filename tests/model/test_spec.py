import json

import pytest

from anytime.config import ConfigError, ModelConfig, load_model_config
from anytime.model import AnytimeRetinaNet
from anytime.model.spec import ArchitectureError, PyramidSpec, builtin_architectures


def test_builtins_load_and_round_trip(tmp_path):
    assert {"nasfpn", "nasfpn-lite"} <= set(builtin_architectures())
    spec = PyramidSpec.load("nasfpn")
    assert len(spec.cells) == 7 and spec.levels == (3, 4, 5, 6, 7)
    path = tmp_path / "arch.json"
    spec.to_json(path)
    assert PyramidSpec.load(path) == spec


def test_discovered_cell_matches_the_paper_table():
    spec = PyramidSpec.load("nasfpn")
    rows = [(c.level, c.op, c.inputs, c.output) for c in spec.cells]
    assert rows == [
        (4, "global_pool", (1, 3), False), (4, "sum", (1, 5), False), (3, "sum", (0, 6), True),
        (4, "sum", (6, 7), True), (5, "global_pool", (7, 8), True), (7, "global_pool", (6, 9), True),
        (6, "global_pool", (9, 10), True),
    ]


def test_fpn_in_cells_is_a_top_down_chain_that_stacks():
    """The paper's Figure 7a: P7 from the two C5-derived inputs, then each finer output = its lateral input + the
    output one level up. Unlike torchvision's FPN it stacks, with an exit per pyramid and residual pyramids."""
    spec = PyramidSpec.load("fpn-cells")
    assert [(c.level, c.op, c.inputs, c.output) for c in spec.cells] == [
        (7, "sum", (3, 4), True), (6, "sum", (3, 5), True), (5, "sum", (2, 6), True), (4, "sum", (1, 7), True),
        (3, "sum", (0, 8), True)]
    cfg = load_model_config("fpn-cells")
    default = load_model_config("default")
    assert cfg.pyramid == "fpn-cells" and cfg.num_exits == default.num_exits == 4 and cfg.residual_pyramids
    assert {k: v for k, v in vars(cfg).items() if k != "pyramid"} == \
        {k: v for k, v in vars(default).items() if k != "pyramid"}
    model = AnytimeRetinaNet(ModelConfig(pyramid="fpn-cells", repeats=2, width=16, image_size=128,
                                         backbone_width=0.125, residual_pyramids=True))
    assert model.num_exits == 2


def _spec(cells, levels=(3, 4, 5, 6, 7)):
    return PyramidSpec.from_dict({"name": "t", "levels": list(levels), "cells": cells})


@pytest.mark.parametrize("cells, message", [
    ([{"level": 4, "op": "sum", "inputs": [1, 9], "output": False}], "input index 9 does not exist yet"),
    ([{"level": 4, "op": "concat", "inputs": [1, 2]}], "unknown binary op 'concat'"),
    ([{"level": 9, "op": "sum", "inputs": [1, 2]}], "output level P9"),
    ([{"level": 4, "op": "sum", "inputs": [1, 1]}], "must differ"),
    ([{"level": 3, "op": "sum", "inputs": [0, 1], "output": True}], "every level"),
])
def test_bad_architectures_name_the_problem(cells, message):
    with pytest.raises(ArchitectureError, match=message):
        _spec(cells)


def test_bad_configurations_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown backbone 'resnet7'"):
        AnytimeRetinaNet(ModelConfig(backbone="resnet7"))
    with pytest.raises(ConfigError, match="image size 200 cannot be divided by the pyramid.*multiple of 128"):
        AnytimeRetinaNet(ModelConfig(image_size=200))
    with pytest.raises(ConfigError, match="unknown model config field"):
        ModelConfig.from_dict({"widht": 3})
    with pytest.raises(ConfigError, match="unknown configuration"):
        load_model_config("no-such-preset")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "cells": [{"level": 4, "op": "sum", "inputs": [0, 12]}]}))
    with pytest.raises(ArchitectureError, match="input index 12 does not exist"):
        AnytimeRetinaNet(ModelConfig(pyramid=str(bad)))
    with pytest.raises(ConfigError, match=r"pyramid_spec \(from x.json\): .*input index 12 does not exist"):
        AnytimeRetinaNet(ModelConfig(pyramid="x.json", pyramid_spec=json.loads(bad.read_text())))
    with pytest.raises(ConfigError, match="pyramid_spec is set but the pyramid is the FPN baseline"):
        ModelConfig(pyramid="fpn", repeats=1, pyramid_spec=PyramidSpec.load("nasfpn").to_dict()).validate()


def test_lite_variant_builds_with_four_levels():
    cfg = ModelConfig(backbone="mobilenet_v2", pyramid="nasfpn-lite", separable=True, repeats=2, width=16, image_size=64)
    model = AnytimeRetinaNet(cfg)
    assert model.levels == (3, 4, 5, 6)


def test_exit_weights_carry_to_another_depth_at_the_same_mean():
    from anytime.config import exit_weights_at_depth

    default = [0.4, 0.8, 1.2, 1.6]
    assert exit_weights_at_depth(default, 4) == default
    assert exit_weights_at_depth(default, 1) == [1.0]
    assert exit_weights_at_depth(default, 2) == pytest.approx([2 / 3, 4 / 3], abs=1e-4)
    assert exit_weights_at_depth(None, 2) is None  # equal weights stay equal
    with pytest.raises(ConfigError, match="at least one pyramid"):
        exit_weights_at_depth(default, 0)
