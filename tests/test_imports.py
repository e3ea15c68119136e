"""Torch only where it computes: the command's parser, the gateway process and the detect client import none of the
heavy libraries, so ``anytime --help`` answers at once and ``anytime serve`` stays small (it was 715 MB resident
with torch, imported only because the parser's modules and the CLI's error types pulled it in)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "onnx", "matplotlib", "ray", "pycocotools")

# What `anytime serve` and `anytime detect` import before they do their work: the parser of every command, the
# CLI's error types, the gateway and what it runs on, the export check serve makes, and the client.
SERVING_AND_CLIENT = """
import json, sys
import anytime.cli
anytime.cli.build_parser()
anytime.cli.user_error_types()
import anytime.config, anytime.export.ensure, anytime.export.repository
import anytime.serving.cli, anytime.serving.execution, anytime.serving.gateway, anytime.serving.stack
import anytime.serving.triton
import anytime.clients.cli, anytime.clients.detect
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_the_parser_the_gateway_and_the_client_import_no_torch():
    r = subprocess.run([sys.executable, "-c", SERVING_AND_CLIENT], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout.splitlines()[-1]))
    assert "anytime" in loaded and not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_help_answers():
    r = subprocess.run([sys.executable, "-m", "anytime", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "serve" in r.stdout and "detect" in r.stdout and "export" in r.stdout
