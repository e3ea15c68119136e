"""server/ holds what runs a server: its recipes must agree with the code they launch (no Docker here, so check
what can be checked: the manifest parses, and every flag, port and metric it names exists)."""

import re
from pathlib import Path

import yaml

from anytime.cli import build_parser
from anytime.serving.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "server"


def _serve_flags() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {s for a in sub.choices["serve"]._actions for s in a.option_strings}


def test_the_kubernetes_manifest_parses_and_names_what_the_gateway_exposes():
    docs = {d["kind"]: d for d in yaml.safe_load_all((SERVER / "k8s" / "anytime.yaml").read_text())}
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    containers = {c["name"]: c for c in docs["Deployment"]["spec"]["template"]["spec"]["containers"]}
    gateway = containers["gateway"]
    env = {e["name"]: e["value"] for e in gateway["env"]}
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert int(env["PORT"]) == ports["grpc"] and int(env["METRICS_PORT"]) == ports["metrics"]
    assert env["TRITON"].endswith(str({p["name"]: p["containerPort"] for p in containers["triton"]["ports"]}["triton-grpc"]))
    metric = docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in {m.name for m in GatewayMetrics().registry.collect()}


def test_the_launch_script_uses_existing_serve_flags():
    used = set(re.findall(r"(--[a-z][a-z-]+)", (SERVER / "run-gateway.sh").read_text()))
    assert used and used <= _serve_flags(), used - _serve_flags()


def test_the_container_recipe_exports_for_the_native_onnxruntime_backend():
    text = (SERVER / "Dockerfile").read_text()
    assert "nvcr.io/nvidia/tritonserver" in text and "--backend onnxruntime" in text
    assert "AS triton" in text and "AS gateway" in text and "run-gateway" in text
