"""The search's figures are real PNGs, drawn from records as trials.jsonl holds them (failed trials included)."""

from anytime.search.plots import plot_best_so_far, plot_rewards


def _records(rewards, failed=()):
    return [{"step": i, "reward": r, "status": "failed" if i in failed else "ok"} for i, r in enumerate(rewards)]


def _png_size(path):
    from matplotlib.image import imread

    image = imread(path)
    return image.shape[1], image.shape[0]


def test_best_so_far_draws_searches_side_by_side_with_references(tmp_path):
    searches = {"ppo": _records([0.01, 0.05, 0.0, 0.07], failed={2}), "random": _records([0.02, 0.01, 0.03])}
    out = plot_best_so_far(searches, tmp_path / "cmp.png", {"NAS-FPN": 0.088, "FPN": 0.068})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _png_size(out) == (650, 380)


def test_reward_curve_with_only_failed_trials_still_draws(tmp_path):
    out = plot_rewards(_records([0.0, 0.0], failed={0, 1}), tmp_path / "r.png")
    assert _png_size(out) == (650, 380)
