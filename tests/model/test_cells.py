import itertools

import pytest
import torch

from anytime.model.cells import MergingCell, global_pool_op, resample
from anytime.model.pyramid import PyramidNetwork
from anytime.model.spec import PyramidSpec

LEVELS = (3, 4, 5, 6, 7)


@pytest.mark.parametrize("src, dst", list(itertools.product(LEVELS, LEVELS)))
def test_resampling_between_every_pair_of_levels(src, dst):
    size = 256 // 2**src
    x = torch.randn(2, 4, size, size)
    y = resample(x, src, dst)
    assert y.shape == (2, 4, 256 // 2**dst, 256 // 2**dst)
    f = 2 ** abs(dst - src)
    if dst < src:  # nearest upsampling: every output pixel copies its parent
        assert torch.equal(y, x.repeat_interleave(f, 2).repeat_interleave(f, 3))
    elif dst > src:  # max pooling over f x f blocks
        assert torch.equal(y, x.unfold(2, f, f).unfold(3, f, f).amax((-1, -2)))
    else:
        assert y is x


def test_global_pool_gates_the_finer_input_with_the_coarser_ones_global_max():
    coarse = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])
    fine = torch.full((1, 1, 2, 2), 2.0)
    gate = torch.sigmoid(torch.tensor(3.0))
    assert torch.allclose(global_pool_op(coarse, fine), coarse + fine * gate)


def test_cell_gates_with_whichever_input_is_coarser():
    cell = MergingCell("global_pool", level=4, input_levels=(3, 6), channels=2)
    fine, coarse = torch.randn(1, 2, 32, 32), torch.randn(1, 2, 4, 4)
    expected = global_pool_op(resample(coarse, 6, 4), resample(fine, 3, 4))
    assert torch.allclose(cell.combine(fine, coarse), expected)
    swapped = MergingCell("global_pool", level=4, input_levels=(6, 3), channels=2)
    assert torch.allclose(swapped.combine(coarse, fine), expected)


def test_unused_feature_rule_adds_p5_and_p7_inputs_for_the_discovered_cell():
    net = PyramidNetwork(PyramidSpec.load("nasfpn"), channels=8)
    # cells 4 and 5 (nodes 9 and 10) are the P5 and P7 outputs; inputs P5 and P7 are nodes 2 and 4
    assert net.unused_into == [[], [], [], [], [2], [4], []]


def test_unused_feature_is_summed_before_relu_conv_bn():
    spec = PyramidSpec.from_dict({"name": "t", "levels": [3, 4, 5], "cells": [
        {"level": 3, "op": "sum", "inputs": [0, 1], "output": True},
        {"level": 4, "op": "sum", "inputs": [0, 3], "output": True},
        {"level": 5, "op": "sum", "inputs": [3, 4], "output": True},  # input P5 (node 2) is never consumed
    ]})
    net = PyramidNetwork(spec, channels=4).eval()
    assert net.unused_into == [[], [], [2]]
    inputs = [torch.randn(1, 4, 16 // 2**i, 16 // 2**i) for i in range(3)]
    p3, p4, p5 = net(inputs)
    last = net.cells[2]
    expected = last.finish(resample(p3, 3, 5) + resample(p4, 4, 5) + inputs[2])
    assert torch.allclose(p5, expected)
    without = last.finish(resample(p3, 3, 5) + resample(p4, 4, 5))
    assert not torch.allclose(p5, without)
