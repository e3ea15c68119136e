"""Boxes follow the pixels through resize, crop/pad and flip; eval is inverted by scale; output is S x S uint8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anytime.data.transforms import DetectionTransform, eval_transform, train_transform


def _scene(w=200, h=100, box=(40, 20, 80, 60)):
    """Black image with one white rectangle; target with that box and a crowd box at the same place."""
    a = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    a[y1:y2, x1:x2] = 255
    t = {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([3]),
         "crowd_boxes": torch.tensor([box], dtype=torch.float32), "image_id": 1, "scale": 1.0, "orig_size": (h, w)}
    return Image.fromarray(a), t


def _white_extent(img):
    ys, xs = np.nonzero(img[0].numpy() > 127)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_eval_resize_pad_and_inverse():
    image, target = _scene()
    img, t = eval_transform(128)(image, target)
    assert img.shape == (3, 128, 128) and img.dtype == torch.uint8 and type(img) is torch.Tensor
    assert t["scale"] == pytest.approx(0.64)
    assert t["boxes"].tolist()[0] == pytest.approx([25.6, 12.8, 51.2, 38.4])
    assert (img[:, 64:, :] == 0).all()  # 100 * 0.64 = 64 rows of image, the rest padding
    assert (t["boxes"] / t["scale"]).tolist()[0] == pytest.approx([40, 20, 80, 60], abs=1e-4)
    assert np.allclose(_white_extent(img), t["boxes"][0].numpy(), atol=1)
    assert t["labels"].tolist() == [3] and t["image_id"] == 1 and t["orig_size"] == (100, 200)


def test_eval_is_deterministic():
    image, target = _scene()
    a, b = eval_transform(96)(image, target), eval_transform(96)(image, target)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


def test_flip_exact():
    image, target = _scene(w=128, h=64)
    img, t = DetectionTransform(128, train=True, scale_range=(1.0, 1.0), flip_prob=1.0)(image, target)
    assert t["boxes"].tolist() == [[48, 20, 88, 60]] and t["crowd_boxes"].tolist() == [[48, 20, 88, 60]]
    assert _white_extent(img) == [48, 20, 88, 60]


@pytest.mark.parametrize("seed", range(6))
def test_train_boxes_follow_the_pixels(seed):
    torch.manual_seed(seed)
    image, target = _scene(w=300, h=260, box=(100, 90, 180, 170))  # crops happen: 300 * 1.2 > 128 after jitter
    img, t = train_transform(96)(image, target)
    assert img.shape == (3, 96, 96) and img.dtype == torch.uint8
    if len(t["boxes"]):
        assert np.allclose(_white_extent(img), t["boxes"][0].numpy(), atol=1.5)
        assert torch.equal(t["boxes"], t["crowd_boxes"])
    assert 96 * 0.8 / 300 - 1e-6 <= t["scale"] <= 96 * 1.2 / 300 + 1e-6


def test_train_crop_moves_boxes():
    """A big image is cropped: over several draws the box lands in different places."""
    image, target = _scene(w=400, h=400, box=(150, 150, 250, 250))
    spots = set()
    for seed in range(8):
        torch.manual_seed(seed)
        img, t = DetectionTransform(64, train=True, scale_range=(1.2, 1.2), flip_prob=0.0)(image, target)
        if len(t["boxes"]):
            assert np.allclose(_white_extent(img), t["boxes"][0].numpy(), atol=1.5)
            spots.add(tuple(t["boxes"][0].round().tolist()))
    assert len(spots) > 1


def test_train_deterministic_given_torch_rng():
    image, target = _scene()
    torch.manual_seed(123)
    a = [train_transform(64)(image, target) for _ in range(3)]
    torch.manual_seed(123)
    b = [train_transform(64)(image, target) for _ in range(3)]
    for (ia, ta), (ib, tb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"]) and ta["scale"] == tb["scale"]


def test_small_boxes_dropped_with_their_labels():
    image, target = _scene(w=400, h=400, box=(100, 100, 200, 200))
    target["boxes"] = torch.tensor([[0, 0, 3, 3], [100, 100, 200, 200]], dtype=torch.float32)
    target["labels"] = torch.tensor([5, 3])
    _, t = eval_transform(64)(image, target)  # scale 0.16: the 3 px box becomes 0.48 px
    assert t["labels"].tolist() == [3] and t["boxes"].shape == (1, 4)


def test_tensor_and_greyscale_inputs():
    grey = Image.fromarray(np.full((30, 40), 50, np.uint8), "L")
    t = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "crowd_boxes": torch.zeros(0, 4)}
    img, out = eval_transform(32)(grey, t)
    assert img.shape == (3, 32, 32) and out["boxes"].shape == (0, 4)
    img2, _ = eval_transform(32)(torch.from_numpy(np.array(grey.convert("RGB"))).permute(2, 0, 1), t)
    assert torch.equal(img, img2)


def test_a_header_claiming_gigapixels_is_refused_without_touching_pillows_global_guard():
    import importlib
    import struct
    import zlib

    from PIL import Image as PILImage

    from anytime.imaging import BadImage, decode

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    guard = PILImage.MAX_IMAGE_PIXELS
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))
    with pytest.raises(BadImage, match="exceeds the limit"):
        decode(png)
    with pytest.raises(BadImage, match="exceeds the limit of 100 megapixels"):
        decode(png, max_pixels=100_000_000_000 // 1000)
    importlib.import_module("anytime.serving.gateway")  # the serving path must not switch Pillow's guard off
    assert PILImage.MAX_IMAGE_PIXELS == guard and guard is not None
