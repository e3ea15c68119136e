"""Each exit's AP in the manifest comes from an evaluation report of that very checkpoint, or not at all."""

import json

import pytest

from anytime.config import DEFAULT_CHECKPOINT
from anytime.export.accuracy import ReportMismatch, find_ap, manifest_ap, report_candidates
from anytime.export.repository import sha256_file


def _report(sha, aps):
    return {"checkpoint_sha256": sha, "exits": [{"exit": k, "AP": ap} for k, ap in enumerate(aps, start=1)]}


def test_a_report_of_the_checkpoint_gives_each_exits_ap_and_another_models_is_skipped(tmp_path):
    ckpt = tmp_path / "final.pt"
    ckpt.write_bytes(b"weights")
    sha = sha256_file(ckpt)
    beside, evaluated = report_candidates(ckpt)
    beside.write_text(json.dumps(_report("0" * 64, [0.5, 0.6])))  # another model's: skipped, not trusted
    assert find_ap(ckpt, sha, [1, 2]) == (None, None)
    evaluated.parent.mkdir()
    evaluated.write_text(json.dumps(_report(sha, [0.1, 0.2])))
    ap, source = find_ap(ckpt, sha, [1, 2])
    assert ap == {1: 0.1, 2: 0.2} and source == str(evaluated)
    with pytest.raises(ReportMismatch, match="not an evaluation of this checkpoint"):
        find_ap(ckpt, sha, [1, 2], report=beside)  # named explicitly: an error, not a silent skip
    with pytest.raises(ReportMismatch, match="no AP for exit"):
        find_ap(ckpt, sha, [1, 2, 3], report=evaluated)


def test_the_shipped_model_carries_its_own_evaluation():
    ap, source = find_ap(DEFAULT_CHECKPOINT, sha256_file(DEFAULT_CHECKPOINT), [1, 2, 3, 4])
    assert source == "anytime/assets/default_model.eval.json"
    assert all(0 < ap[k] < 1 for k in ap) and ap[4] > ap[1]


def test_manifest_ap_needs_every_exit():
    assert manifest_ap({"exits": [{"exit": 1, "ap": 0.2}, {"exit": 2, "ap": 0.3}]}) == {1: 0.2, 2: 0.3}
    assert manifest_ap({"exits": [{"exit": 1, "ap": 0.2}, {"exit": 2, "ap": None}]}) is None
