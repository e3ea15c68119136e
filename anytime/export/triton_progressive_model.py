"""Triton python-backend model for progressive execution: the exported stages in one decoupled model.

Copied as ``model.py`` into ``anytime_progressive/1/`` beside ``features1.onnx`` .. ``featuresK.onnx`` and
``head1.onnx`` .. ``headK.onnx``. Each request is one image with what is left of its budget, its allowed exits and
whether it wants every exit on the way (``every_exit``, a stream) or only its answer (then only the answer's head
runs); each exit's detections go back as their own response the moment its head ends. Every response carries
``exit`` and ``final`` (1 on the request's last one; a request stopped before its deepest allowed exit ends with
``exit`` 0, ``final`` 1), so a client knows the stream is over without Triton's reserved empty-final-response
parameter. A response with ``exit`` 0 and ``final`` 0 says that the request's first stage is done (the gateway
frees the request's admission reservation then: with lazy heads, its first exit may come only with its answer).
Between stages a request's features stay here, in this process's memory: they never cross the wire (measured
against passing them through Triton's shared memory, see the README), and one copy of each stage's weights serves
every request.

A worker thread runs the stages; ``anytime.serving.progressive.StageEngine`` (pure logic, tested on a simulated
clock) decides which step (a stage's features or an exit's head) runs next, for which requests together, and which
requests stop. It imports numpy only, never torch. Config parameters: ``features`` and ``heads`` (the files, in
order), ``levels`` (pyramid levels of the features), ``max_stage_batch``, ``intra_op_thread_count``,
``planning_quantile``, ``margin_ms``, ``metrics_interval_ms``.

Custom metrics on Triton's /metrics: ``anytime_stage_runs``, ``anytime_stage_images``, ``anytime_stage_graph_seconds``
and ``anytime_stage_call_seconds`` per stage and part (features, head), ``anytime_progressive_requests`` per outcome
(done, failed, cancelled). They are written by one thread of their own (``anytime.serving.backend_metrics``), at
most every ``metrics_interval_ms`` (default 100; 0: after each event), so they show a moment after the events they
count: two threads updating a metric crash Triton, and each write costs the graphs running beside it.
"""

import json
import os
import queue
import threading
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from anytime.serving.backend_metrics import MetricWriter
from anytime.serving.latency import LatencyProfile
from anytime.serving.progressive import FEATURES, HEAD, REFUSED, Job, StageEngine, Step, step_key

DETECTIONS = ("boxes", "scores", "labels", "num_detections")
DTYPES = {"boxes": np.float32, "scores": np.float32, "labels": np.int64, "num_detections": np.int64}
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class _Request:
    """What the worker needs of one request: where its responses go, and the input of its next stage."""

    def __init__(self, request, sender, inputs):
        self.request, self.sender = request, sender
        self.inputs = inputs  # the arrays of the latest features (the image before stage 1), one row each

    def cancelled(self):
        try:
            return self.request.is_cancelled()
        except Exception:  # a backend without cancellation: never cancelled
            return False


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = config.get("name", "anytime_progressive")
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        files = {part: [f for f in params.get(key, "").split(",") if f] for part, key in
                 ((FEATURES, "features"), (HEAD, "heads"))}
        if not files[FEATURES] or len(files[FEATURES]) != len(files[HEAD]):
            raise pb_utils.TritonModelException(f"{self.name}: parameters 'features' and 'heads' must name one file "
                                                f"per stage each, got {files}")
        self.num_stages = len(files[FEATURES])
        levels = [int(x) for x in params.get("levels", "3,4,5,6,7").split(",")]
        self.features_in = [f"p{lv}" for lv in levels]
        self.features_out = [f"p{lv}_out" for lv in levels]
        self.max_batch = max(1, int(params.get("max_stage_batch") or 8))

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count") or 0)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {Step(part, k): ort.InferenceSession(os.path.join(version_dir, f), sess_options=options,
                                                              providers=["CPUExecutionProvider"])
                         for part, names in files.items() for k, f in enumerate(names, start=1)}
        image = pb_utils.get_input_config_by_name(config, "images")
        self.image_shape = tuple(int(d) for d in image["dims"])[1:]

        prior = self._calibrate()
        quantile = float(params.get("planning_quantile") or 0.95)
        self.engine = StageEngine(LatencyProfile(prior, quantile=quantile, cumulative=False), self.num_stages,
                                  self.max_batch, margin_s=float(params.get("margin_ms") or 3.0) / 1000)
        self.lock = threading.Condition()
        self.stopping = False

        # The families must outlive their metrics (Triton deletes a metric whose family is gone): keep them.
        self.families = [pb_utils.MetricFamily(name=n, description=d, kind=pb_utils.MetricFamily.COUNTER) for n, d in (
            ("anytime_stage_runs", "Stage calls, by stage"), ("anytime_stage_images", "Images through each stage"),
            ("anytime_progressive_requests", "Requests by outcome"),
            ("anytime_stage_graph_seconds", "Seconds in the ONNX graphs of each step"),
            ("anytime_stage_call_seconds", "Seconds each step's calls cost the executor: decision, feed, graph, responses"))]
        runs, images, outcomes, graph_s, call_s = self.families
        self.m_runs = {s: runs.Metric(labels={"stage": str(s.level), "part": s.kind}) for s in self.sessions}
        self.m_images = {s: images.Metric(labels={"stage": str(s.level), "part": s.kind}) for s in self.sessions}
        self.m_outcome = {o: outcomes.Metric(labels={"outcome": o}) for o in ("done", "failed", "cancelled")}
        self.m_graph_seconds = {s: graph_s.Metric(labels={"stage": str(s.level), "part": s.kind}) for s in self.sessions}
        self.m_call_seconds = {s: call_s.Metric(labels={"stage": str(s.level), "part": s.kind}) for s in self.sessions}
        # Written from one thread of its own: the stub crashes Triton when two threads update a metric (see
        # anytime.serving.backend_metrics), and each update is a round trip to the server. Outcomes are written last,
        # so a reader who sees an outcome also sees the stage counts of the calls before it.
        self.metrics = MetricWriter(interval_s=float(params.get("metrics_interval_ms") or 100) / 1000)
        for group in (self.m_runs, self.m_images, self.m_graph_seconds, self.m_call_seconds, self.m_outcome):
            self.metrics.track(*group.values())
        # Responses go out from a thread of their own, in the order they were queued (``_send_loop``)
        self.outbox = queue.SimpleQueue()
        self.sender = threading.Thread(target=self._send_loop, name="anytime-responses", daemon=True)
        self.sender.start()
        self.worker = threading.Thread(target=self._loop, name="anytime-stages", daemon=True)
        self.worker.start()

    # -- start-up: what each stage costs here, at each batch size --------------------------------------------
    def _calibrate(self, runs=3, slow_s=0.5):
        """Mean seconds per call of every step at batch 1, 2, 4, .. max_stage_batch (larger sizes skipped once
        a call takes over ``slow_s``): the engine's prior (keyed as the engine keys steps), which it then
        corrects online."""
        prior = {}
        sizes = [b for b in (1, 2, 4, 8, 16, 32) if b <= self.max_batch]
        rng = np.random.default_rng(0)
        for batch in sizes:
            feed = {"images": rng.integers(0, 256, (batch, *self.image_shape), dtype=np.uint8)}
            for k in range(1, self.num_stages + 1):
                features = self._time(Step(FEATURES, k), feed, batch, runs, prior)
                feed = dict(zip(self.features_in, features))
                self._time(Step(HEAD, k), feed, batch, runs, prior)
            if max(max(s[batch]["samples_ms"]) for s in prior.values()) > slow_s * 1e3:
                break
        return prior

    def _time(self, step, feed, batch, runs, prior):
        """Time ``runs`` calls of ``step`` on ``feed`` into ``prior``; returns the outputs."""
        session = self.sessions[step]
        out = session.run(None, feed)  # warm-up
        samples = []
        for _ in range(runs if batch > 1 else runs + 2):
            t0 = time.perf_counter()
            out = session.run(None, feed)
            samples.append((time.perf_counter() - t0) * 1e3)
        prior.setdefault(step_key(step, self.num_stages), {})[batch] = {"samples_ms": samples}
        return out

    # -- requests in ----------------------------------------------------------------------------------------
    def execute(self, requests):
        now = time.monotonic()
        for request in requests:
            sender = request.get_response_sender()
            try:
                images = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
                budget_ms = float(pb_utils.get_input_tensor_by_name(request, "budget_ms").as_numpy().reshape(-1)[0])
                lo, hi = (int(x) for x in pb_utils.get_input_tensor_by_name(request, "exits").as_numpy().reshape(-1))
                every = pb_utils.get_input_tensor_by_name(request, "every_exit")
                every_exit = every is not None and bool(every.as_numpy().reshape(-1)[0])
                if images.dtype != np.uint8 or tuple(images.shape) != (1, *self.image_shape):
                    raise ValueError(f"images must be uint8 [1, {', '.join(map(str, self.image_shape))}], "
                                     f"got {images.dtype} {list(images.shape)}")
                if not np.isfinite(budget_ms) or budget_ms <= 0:
                    raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
            except Exception as e:
                sender.send(_error(f"{self.name}: {e}"), flags=FINAL)
                continue
            job = Job(deadline=now + budget_ms / 1000, arrival=now, max_exit=hi or self.num_stages,
                      min_exit=max(lo, 1), every_exit=every_exit, payload=_Request(request, sender, [images]))
            with self.lock:
                accepted = self.engine.add(job, now)
                self.lock.notify()
            if not accepted:
                self._settle(job, "failed", REFUSED[job.state])
        return None

    # -- the worker -----------------------------------------------------------------------------------------
    def _loop(self):
        while True:
            with self.lock:
                while True:
                    if self.stopping:
                        return
                    started = time.monotonic()  # the call's cost to the executor starts with its decision
                    plan = self.engine.plan(started)
                    for job in plan.finished:
                        self._settle(job, "done")
                    for job in plan.failed:
                        self._settle(job, "failed", "the deadline passed before a first exit could be computed")
                    live = []
                    for job in plan.jobs:
                        if job.payload.cancelled():
                            self.engine.cancel(job)
                            self._settle(job, "cancelled")
                        else:
                            live.append(job)
                    if live:
                        break
                    if not plan.jobs:
                        self.lock.wait(timeout=0.05 if self.engine.waiting else None)
            self._run(plan.step, live, started)

    def _run(self, step, jobs, started):
        try:
            self._run_step(step, jobs, started)
        except Exception as e:  # never let the worker die: fail these requests and go on
            with self.lock:
                self.engine.failed(jobs)
            for job in jobs:
                if job.state == "failed":
                    self._settle(job, "failed", f"{step.kind} {step.level}: {type(e).__name__}: {e}")

    def _run_step(self, step, jobs, started):
        """Run ``step`` on ``jobs`` and send what it produced.

        The engine learns what the call cost this executor, not only the graph: the decision, the feed and the
        graph. Outside the graph that was about 1-1.5 ms a call here with the responses sent by this thread
        (measured on the default model at 50-80% load, p90 2-3 ms), a third of a 2.5 ms pyramid network: an engine
        that learns only the graphs' times queues a third more work than it plans for, and admits requests that
        then get no exit. The responses are queued for the sender thread, which sends them while the next call
        runs (ONNX Runtime releases the GIL): sending a response is a round trip to the server process, and at
        batch 1 to exit 4 the progress response after stage 1 and the answer after the head cost 0.8-1.2 ms each
        on this thread."""
        session = self.sessions[step]
        names_in = ["images"] if step == Step(FEATURES, 1) else self.features_in
        feed = {n: (jobs[0].payload.inputs[i] if len(jobs) == 1
                    else np.concatenate([j.payload.inputs[i] for j in jobs])) for i, n in enumerate(names_in)}
        t0 = time.monotonic()
        try:
            out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        except Exception as e:  # a failed call fails its requests, never the model
            raise RuntimeError(f"onnxruntime failed: {e}") from None
        graph = time.monotonic() - t0
        self.metrics.add(self.m_runs[step], 1)
        self.metrics.add(self.m_images[step], len(jobs))
        with self.lock:  # first what comes next for each request, so that a last response says it is the last
            now = time.monotonic()
            ended = {job.id for job in self.engine.ran(step, jobs, now - started, now)}
        for i, job in enumerate(jobs):
            if job.state == "cancelled":
                continue
            if step.kind == FEATURES:  # the input of what comes next: these features, this request's row
                job.payload.inputs = [out[n][i:i + 1] for n in self.features_out]
                if step.level == 1:  # progress: its first stage is done (heads are lazy: no exit may come yet)
                    self._send(job, [("exit", np.array([0], np.int32)), ("final", np.array([0], np.int32))], 0)
                continue
            final = job.id in ended
            arrays = [(n, out[n][i:i + 1]) for n in DETECTIONS]
            arrays += [("exit", np.array([step.level], np.int32)), ("final", np.array([int(final)], np.int32))]
            self._send(job, arrays, FINAL if final else 0)
        self.metrics.add(self.m_graph_seconds[step], graph)
        self.metrics.add(self.m_call_seconds[step], time.monotonic() - started)
        with self.lock:
            self.lock.notify()

    # -- responses out: one thread sends them all, in the order queued ------------------------------------------
    def _send(self, job, arrays, flags):
        """Queue one response of ``job``'s stream: ``arrays`` ((name, numpy array) pairs), ``flags`` FINAL on its
        last."""
        self.outbox.put((self._send_now, (job, arrays, flags)))

    def _settle(self, job, outcome, message=None):
        """Queue the end of a request that got no final response yet (see ``_settle_now``)."""
        self.outbox.put((self._settle_now, (job, outcome, message)))

    def _send_loop(self):
        """The sender thread: a request's responses leave in the order they were queued, its end after them."""
        while True:
            item = self.outbox.get()
            if item is None:
                return
            action, args = item
            try:
                action(*args)
            except Exception:  # never let the sender die
                pass

    def _send_now(self, job, arrays, flags):
        """Send one response of ``job``'s stream; the job is cancelled when its client is gone.

        Past the request's deadline, asked first whether it was cancelled: the gateway cancels a request's stream
        when it answers at the deadline while a deeper stage still runs, and a response sent on a cancelled
        decoupled request is what Triton's own tests skip as a segmentation fault of the python backend (server
        PR #7292); asking also makes Triton close the stream itself. A guard: the Triton crashes seen here were
        not this but two threads updating custom metrics (``anytime.serving.backend_metrics``). Only then: each
        question is a round trip to the server process, and before the deadline the gateway has not cancelled (a
        client that left early is caught when its next step is planned)."""
        if job.state == "cancelled":
            return
        if self._late_and_cancelled(job):
            self._gone(job)
            return
        tensors = [pb_utils.Tensor(n, np.ascontiguousarray(a, dtype=DTYPES.get(n, a.dtype))) for n, a in arrays]
        try:
            job.payload.sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=flags)
        except Exception:
            self._gone(job)
            return
        if flags & FINAL:
            self.metrics.add(self.m_outcome["done"], 1)

    @staticmethod
    def _late_and_cancelled(job):
        return time.monotonic() > job.deadline and job.payload.cancelled()

    def _gone(self, job):
        with self.lock:
            self.engine.cancel(job)
        self.metrics.add(self.m_outcome["cancelled"], 1)

    def _settle_now(self, job, outcome, message=None):
        """End a request that got no final response yet: an error when it failed, an empty final flag else."""
        if outcome != "cancelled" and self._late_and_cancelled(job):  # nothing may be sent on it (see _send)
            outcome = "cancelled"
        self.metrics.add(self.m_outcome[outcome], 1)
        if outcome == "cancelled":
            return
        try:
            if message is not None and job.exit == 0:
                job.payload.sender.send(_error(f"{self.name}: {message}"), flags=FINAL)
            else:  # stopped before its deepest allowed exit: an end marker
                marker = [pb_utils.Tensor("exit", np.array([0], np.int32)),
                          pb_utils.Tensor("final", np.array([1], np.int32))]
                job.payload.sender.send(pb_utils.InferenceResponse(output_tensors=marker), flags=FINAL)
        except Exception:
            pass

    def finalize(self):
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        self.worker.join(timeout=5)
        self.outbox.put(None)  # after what the worker queued
        self.sender.join(timeout=5)
        self.metrics.close()
        self.sessions = {}


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
