"""The committed gRPC stubs are what server/proto/anytime.proto generates (one source, one copy)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "anytime" / "serving" / "api"


def test_committed_stubs_match_the_proto(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "server" / "proto"),
                    f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    str(ROOT / "server" / "proto" / "anytime.proto")], check=True)
    grpc_stub = tmp_path / "anytime_pb2_grpc.py"  # scripts/protos makes its import relative
    grpc_stub.write_text(grpc_stub.read_text().replace("\nimport anytime_pb2 as anytime__pb2\n",
                                                       "\nfrom . import anytime_pb2 as anytime__pb2\n"))
    for name in ("anytime_pb2.py", "anytime_pb2.pyi", "anytime_pb2_grpc.py"):
        assert (API / name).read_text() == (tmp_path / name).read_text(), f"{name} is stale: run scripts/protos"


def test_the_api_package_imports_grpc_and_protobuf_only():
    code = ("import sys; import anytime.serving.api.anytime_pb2_grpc; "
            "heavy = {'torch', 'numpy', 'tritonclient', 'onnxruntime', 'PIL'} & set(sys.modules); "
            "sys.exit(f'imported {sorted(heavy)}' if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr + r.stdout
