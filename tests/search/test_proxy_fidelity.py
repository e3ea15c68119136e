"""benchmarks/proxy_fidelity.py reads the ground truth from eval reports: the full recipe's runs of one pyramid
are its seeds, and a model trained with another number of pyramids (Figure 8a's runs) is not one of them."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("proxy_fidelity", ROOT / "benchmarks" / "proxy_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(path: Path, pyramid: str, aps: list[float]) -> str:
    path.write_text(json.dumps({"model": {"pyramid": pyramid, "repeats": len(aps)},
                                "exits": [{"exit": i + 1, "AP": ap} for i, ap in enumerate(aps)]}))
    return str(path)


def test_seeds_average_and_other_depths_stay_apart(tmp_path):
    truth = load_benchmark().read_truth([
        report(tmp_path / "s0.json", "nasfpn", [0.2, 0.25, 0.28, 0.30]),
        report(tmp_path / "s1.json", "nasfpn", [0.2, 0.25, 0.26, 0.26]),
        report(tmp_path / "p1.json", "nasfpn", [0.12]),
        "fpn=" + report(tmp_path / "f.json", "anytime/configs/x.json", [0.1, 0.2, 0.2, 0.2]),
    ])
    assert set(truth) == {"nasfpn", "nasfpn-p1", "fpn"}
    assert truth["nasfpn"]["full_AP"] == pytest.approx([0.2, 0.25, 0.27, 0.28])
    assert truth["nasfpn"]["full_runs"] == 2 and truth["nasfpn"]["full_spread"] == pytest.approx(0.04)
    assert truth["nasfpn-p1"]["full_AP"] == [0.12]
