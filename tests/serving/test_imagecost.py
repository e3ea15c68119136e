"""The image-cost model: a line in each format's work units, learnt from recent images, calibrated at start."""

from __future__ import annotations

import pytest

from anytime.imaging import Header
from anytime.serving.imagecost import CostLine, ImageCost, units


def test_a_jpeg_counts_what_its_dct_scaling_decodes_and_a_png_every_pixel():
    small, large = Header("JPEG", 640, 480), Header("JPEG", 4000, 3000)
    assert large.decoded_megapixels(256) == pytest.approx(500 * 375 / 1e6)  # 1/8 of each side
    assert small.decoded_megapixels(256) == pytest.approx(320 * 240 / 1e6)  # 1/2: 320 >= 256
    assert units(large, 256) > units(small, 256)  # entropy decoding still reads every coefficient
    assert units(Header("PNG", 1000, 1000), 256) == pytest.approx(1.0)


def test_the_line_is_learnt_from_recent_images_and_a_slowdown_shows_within_a_second():
    line = CostLine([(0.1, 0.002), (1.0, 0.020)], horizon_s=2.0)
    a, b, _ = line.fit()
    assert a + b * 0.5 == pytest.approx(0.010)  # the prior's two points, before any image
    now = 0.0
    for k in range(40):  # images of every size, now three times as slow and with a fixed delay of 5 ms
        u = 0.1 + (k % 10) / 10
        now += 0.02
        line.observe(u, 0.005 + 0.060 * u, now)
    a, b, sd = line.fit()
    assert a == pytest.approx(0.005, abs=1e-6) and b == pytest.approx(0.060) and sd < 1e-6
    line.tick(now + 2.5)  # the slow moment is over and forgotten: the prior again
    assert line.fit()[1] == pytest.approx(0.020)


def test_calibration_gives_every_family_a_rising_cost_and_a_spread():
    cost = ImageCost.calibrate(128, runs=1)
    for fmt in ("JPEG", "PNG", "GIF", "RAW"):
        small, big = Header(fmt, 320, 240), Header(fmt, 2000, 1500)
        assert 0 < cost.expected(small) < cost.expected(big), fmt
        assert cost.spread(big) >= 0.1 * cost.expected(big) and cost.predict(big) > cost.expected(big)



def test_the_line_is_refitted_at_most_every_refit_s_while_images_arrive():
    line = CostLine([(0.1, 0.002), (1.0, 0.020)], horizon_s=2.0, min_samples=1, refit_s=0.05)
    line.observe(0.5, 0.010, 1.000)
    first = line.fit()
    line.observe(0.5, 0.030, 1.010)  # 10 ms later: the fit waits
    assert line.fit() == first
    line.observe(0.5, 0.030, 1.060)  # 60 ms after the last fit: refitted with every point since
    assert line.fit()[0] + line.fit()[1] * 0.5 == pytest.approx((0.010 + 0.030 + 0.030) / 3)
