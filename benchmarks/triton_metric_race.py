"""Does Triton survive a python-backend model whose threads update its custom metrics? A reproduction of the
Triton crashes (signal 11) seen while serving the progressive model, and of the fix, side by side in one run:

    .venv/bin/python benchmarks/triton_metric_race.py [--seconds 20] [--threads 2] [--rounds 1]

Each mode serves one tiny python-backend model whose ``initialize`` starts ``--threads`` Python threads that update
one counter as fast as they can for ``--seconds``:

- ``direct``: each thread calls ``Metric.increment`` itself (what the progressive model did: its worker thread and
  Triton's ``execute`` thread both counted outcomes);
- ``writer``: each thread adds to ``anytime.serving.backend_metrics.MetricWriter``, whose one thread writes to
  Triton (what the progressive model does now).

Prints, per mode and round: whether tritonserver was alive at the end, the seconds from its start until it died,
what killed it, and the counter's value on Triton's /metrics against the updates the threads made.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = '''
import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from anytime.serving.backend_metrics import MetricWriter


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        mode, seconds, threads = params["mode"], float(params["seconds"]), int(params["threads"])
        self.family = pb_utils.MetricFamily(name="race_updates", description="updates",
                                            kind=pb_utils.MetricFamily.COUNTER)
        self.metric = self.family.Metric(labels={"mode": mode})
        self.writer = MetricWriter() if mode == "writer" else None
        self.made = [0] * threads
        update = self.metric.increment if self.writer is None else (lambda v: self.writer.add(self.metric, v))

        def hammer(i):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                update(1)
                self.made[i] += 1
            print(f"race: thread {i} made {self.made[i]} updates", flush=True)

        self.threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def execute(self, requests):
        made = np.array([sum(self.made)], np.int64)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("made", made)]) for _ in requests]

    def finalize(self):
        for t in self.threads:
            t.join(timeout=5)
        if self.writer is not None:
            self.writer.close()
'''

CONFIG = '''name: "race"
backend: "python"
max_batch_size: 0
input [{{ name: "x" data_type: TYPE_INT32 dims: [ 1 ] }}]
output [{{ name: "made" data_type: TYPE_INT64 dims: [ 1 ] }}]
instance_group [{{ kind: KIND_CPU count: 1 }}]
parameters {{ key: "mode" value: {{ string_value: "{mode}" }} }}
parameters {{ key: "seconds" value: {{ string_value: "{seconds}" }} }}
parameters {{ key: "threads" value: {{ string_value: "{threads}" }} }}
'''


def run_mode(mode: str, seconds: float, threads: int) -> dict:
    import numpy as np
    import tritonclient.grpc as grpcclient

    from anytime.serving.triton import TritonConfig, TritonServer, TritonServerError, free_ports
    from anytime.testing import scrape_until

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        (repo / "race" / "1").mkdir(parents=True)
        (repo / "race" / "1" / "model.py").write_text(MODEL)
        (repo / "race" / "config.pbtxt").write_text(CONFIG.format(mode=mode, seconds=seconds, threads=threads))
        http, grpc, metrics = free_ports(3)
        server = TritonServer(TritonConfig(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                           log_file=Path(tmp) / "triton.log"))
        row = {"mode": mode, "alive": False, "died_after_s": None, "crash": "-", "made": None, "counted": None}
        t0 = time.monotonic()  # the threads start with the model, before the server is ready
        server.start()
        try:
            try:
                server.wait_ready(120)
            except TritonServerError:  # it died while loading the model
                pass
            while time.monotonic() - t0 < seconds + 5:
                if not server.is_alive():
                    row["died_after_s"] = round(time.monotonic() - t0, 1)
                    break
                time.sleep(0.2)
            row["alive"] = server.is_alive()
            if row["alive"]:
                client = grpcclient.InferenceServerClient(server.grpc_url)
                x = grpcclient.InferInput("x", [1], "INT32")
                x.set_data_from_numpy(np.zeros(1, np.int32))
                row["made"] = int(client.infer("race", [x]).as_numpy("made")[0])
                # the writer's last round may still be on its way: wait for it, a few seconds at most
                row["counted"] = int(scrape_until(server.metrics_url, "race_updates", lambda v: v >= row["made"],
                                                  timeout=5.0, mode=mode))
        finally:
            rc = server.stop()
        # the exit status of a server that died (a negative one is the signal that killed it)
        row["crash"] = "-" if row["alive"] else (f"signal {-rc}" if rc is not None and rc < 0 else f"exit {rc}")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the threads update the counter")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="runs of each mode, alternating")
    ap.add_argument("--modes", default="direct,writer")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    rows = []
    for r in range(args.rounds):
        for mode in args.modes.split(","):
            row = run_mode(mode, args.seconds, args.threads)
            row["round"] = r + 1
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{args.threads} threads updating one custom metric for {args.seconds:g} s\n")
    print(f"{'mode':8} {'round':>5} {'alive':>6} {'died after':>11} {'killed by':>10} {'updates made':>13} "
          f"{'on /metrics':>12}")
    for row in rows:
        died = "-" if row["died_after_s"] is None else f"{row['died_after_s']:.1f} s"
        made = "-" if row["made"] is None else str(row["made"])
        counted = "-" if row["counted"] is None else str(row["counted"])
        print(f"{row['mode']:8} {row['round']:>5} {str(row['alive']):>6} {died:>11} {row['crash']:>10} "
              f"{made:>13} {counted:>12}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
