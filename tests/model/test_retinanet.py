import pytest
import torch

from anytime.model import AnytimeRetinaNet
from anytime.model.pyramid import PyramidNetwork
from anytime.testing import tiny_config


def _batch(n=2, size=128):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 80.0, 90.0, 96.0]]),
                "labels": torch.tensor([0, 2])} for _ in range(n)]
    return images, targets


@pytest.mark.parametrize("shared", [True, False])
def test_exit_k_never_runs_deeper_pyramid_networks(shared):
    model = AnytimeRetinaNet(tiny_config(repeats=3, shared_head=shared)).eval()
    calls = []
    for i, p in enumerate(model.pyramids):
        p.register_forward_hook(lambda m, a, o, i=i: calls.append(i + 1))
    images, _ = _batch(1)
    for k in (1, 2, 3):
        calls.clear()
        with torch.no_grad():
            model(images, exit=k)
        assert calls == list(range(1, k + 1))


def test_exit_parameters_grow_with_depth_and_shared_head_does_not_grow_with_exits():
    model = AnytimeRetinaNet(tiny_config(repeats=3))
    counts = [sum(p.numel() for p in model.parameters_for_exit(k)) for k in (1, 2, 3)]
    pyramid = sum(p.numel() for p in model.pyramids[0].parameters())
    assert counts[1] - counts[0] == pyramid and counts[2] - counts[1] == pyramid
    shared = sum(p.numel() for p in AnytimeRetinaNet(tiny_config(repeats=3)).heads.parameters())
    separate = sum(p.numel() for p in AnytimeRetinaNet(tiny_config(repeats=3, shared_head=False)).heads.parameters())
    assert separate > 2.5 * shared  # three full heads vs one set of shared conv weights


def test_residual_pyramids_add_each_pyramids_input_to_its_output():
    model = AnytimeRetinaNet(tiny_config(repeats=2, residual_pyramids=True)).eval()
    seen = []
    for p in model.pyramids:
        p.register_forward_hook(lambda m, a, o: seen.append(([x.clone() for x in a[0]], [y.clone() for y in o])))
    heads_saw = []
    model.heads[0].register_forward_hook(lambda m, a, o: heads_saw.append(a[0]))
    with torch.no_grad():
        model.exit_outputs(_batch(1)[0], [1, 2])
    (in1, out1), (in2, out2) = seen
    for level in range(len(in1)):
        assert torch.allclose(in2[level], in1[level] + out1[level])  # pyramid 2 sees exit 1's features
        assert torch.allclose(heads_saw[1][level], in2[level] + out2[level])


def test_residual_pyramids_need_a_stacked_nasfpn():
    from anytime.config import ConfigError

    with pytest.raises(ConfigError, match="residual_pyramids needs a stacked NAS-FPN"):
        tiny_config(pyramid="fpn", repeats=1, residual_pyramids=True).validate()


def test_stacked_pyramids_do_not_share_weights():
    model = AnytimeRetinaNet(tiny_config(repeats=2))
    a, b = (list(p.parameters()) for p in model.pyramids)
    assert all(x.data_ptr() != y.data_ptr() for x, y in zip(a, b))
    assert all(isinstance(p, PyramidNetwork) for p in model.pyramids)


def test_a_training_step_on_a_tiny_batch_reduces_the_loss():
    torch.manual_seed(0)
    model = AnytimeRetinaNet(tiny_config()).train()
    images, targets = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(8):
        out = model.losses(images, targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert set(out) >= {"loss", "exit1/cls", "exit1/box", "exit2/cls", "exit2/box"}
    assert losses[-1] < 0.7 * losses[0], losses


def test_detect_returns_every_exit_in_input_coordinates():
    model = AnytimeRetinaNet(tiny_config(score_thresh=0.0)).eval()
    images, _ = _batch(2)
    out = model.detect(images)
    assert sorted(out) == [1, 2]
    for per_image in out.values():
        assert len(per_image) == 2
        d = per_image[0]
        assert 0 < len(d["boxes"]) <= model.cfg.detections_per_img
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 128).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()  # sorted by score


def test_unknown_exit_and_wrong_input_size_are_clear_errors():
    model = AnytimeRetinaNet(tiny_config()).eval()
    with pytest.raises(ValueError, match="exit 3 does not exist: this model has exits 1..2"):
        model(torch.zeros(1, 3, 128, 128), exit=3)
    with pytest.raises(ValueError, match="expected images of 128x128"):
        model(torch.zeros(1, 3, 64, 64))


def test_the_same_weights_run_at_another_input_size():
    """Every layer is convolutional: set_image_size changes the anchors and the input check, not the weights."""
    from anytime.config import ConfigError

    model = AnytimeRetinaNet(tiny_config(score_thresh=0.0)).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    n128 = len(model.anchors)
    model.set_image_size(256)
    assert model.cfg.image_size == 256 and len(model.anchors) == 4 * n128  # 4x the cells at every level
    out = model.detect(torch.rand(1, 3, 256, 256) * 255)
    assert (out[2][0]["boxes"] <= 256).all() and (out[2][0]["boxes"] > 128).any()  # boxes span the larger input
    with pytest.raises(ValueError, match="expected images of 256x256"):
        model(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ConfigError, match="multiple of 128"):
        model.set_image_size(200)
    assert model.cfg.image_size == 256  # a refused size changes nothing
    model.set_image_size(128)
    assert len(model.anchors) == n128
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_crowd_regions_are_ignored_not_negatives():
    from anytime.model.loss import assign

    model = AnytimeRetinaNet(tiny_config())
    crowd = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    plain = assign(model.anchors, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    with_crowd = assign(model.anchors, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                                         "crowd_boxes": crowd}])
    assert (plain.labels == -1).all()
    inside = (model.anchors[:, :2] >= 0).all(1) & (model.anchors[:, 2:] <= 64).all(1)
    assert inside.sum() > 10
    assert (with_crowd.labels[0, inside] == -2).all()


@pytest.mark.parametrize("levels", [(4, 5, 6, 7), (3, 4, 5, 6), (3, 5, 7), (5, 6, 7)])
def test_architectures_on_any_levels_from_p3_up_run_train_and_detect(levels, tmp_path):
    """A valid spec on levels other than P3-P7 builds, and its pyramid sees features of the right strides."""
    from anytime.model.spec import CellSpec, PyramidSpec

    n = len(levels)
    cells = [CellSpec(level=levels[-1], op="sum", inputs=(0, n - 1))]  # node n
    cells += [CellSpec(level=lv, op="global_pool" if i % 2 else "sum", inputs=(n + i, i), output=True)
              for i, lv in enumerate(levels)]
    path = tmp_path / "arch.json"
    PyramidSpec("custom", levels, tuple(cells)).to_json(path)
    model = AnytimeRetinaNet(tiny_config(pyramid=str(path), repeats=2))
    images, targets = _batch()
    seen = []
    model.pyramids[0].register_forward_pre_hook(lambda m, args: seen.append([f.shape[-1] for f in args[0]]))
    assert torch.isfinite(model.losses(images, targets)["loss"])
    assert seen[0] == [128 // 2 ** lv for lv in levels]
    model.eval()
    assert len(model.detect(images)[2]) == 2


def test_levels_below_p3_are_a_clear_config_error(tmp_path):
    from anytime.config import ConfigError
    from anytime.model.spec import CellSpec, PyramidSpec

    path = tmp_path / "p2.json"
    PyramidSpec("p2", (2, 3), (CellSpec(2, "sum", (0, 1), True), CellSpec(3, "sum", (1, 2), True))).to_json(path)
    with pytest.raises(ConfigError, match="start below P3"):
        tiny_config(pyramid=str(path)).validate()
