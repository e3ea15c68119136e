"""Trials as plain Ray tasks; the controller stays in the driver.

Why plain tasks and not Ray Tune's searcher interface: the driver already owns everything a Tune experiment
would manage (the order in which results reach the controller, fixed PPO batches, exact resume from our own
checkpoint, reuse of duplicate architectures), and that determinism is the point of it (``loop``). Tune
would add a second, differently shaped experiment state to keep in step with ours, needs
``max_concurrent_trials`` / ``ConcurrencyLimiter`` before a custom searcher gets more than one pending trial,
and ``ray[tune]`` adds about 45 s and 630 MB to a fresh venv (measured with ray 2.60.0), where plain ``ray``
adds 17 s and 250 MB. With tasks, ``ray.wait`` gives each result as it arrives and ``max_retries`` /
``retry_exceptions`` give bounded retries.

- Local by default: ``ray.init`` on this machine with ``workers x cpus_per_trial`` CPUs, no dashboard (ray
  2.60 still starts its dashboard process for the job and state APIs, without the web UI), no usage
  reporting, worker output kept out of the terminal (the progress bar owns it). A watchdog (``reaper``)
  kills what Ray leaves behind if this process is killed outright. Ray runs its workers at nice 15
  (``RAY_worker_niceness``): on a machine busy with other work, trials get what is left.
- ``address`` joins an existing cluster instead (``ray start --head`` elsewhere); nothing is started or
  stopped then but this driver's connection.
- Each trial is a task with ``num_cpus=cpus_per_trial`` and ``num_gpus=gpus_per_trial`` (fractions allowed:
  several trials share a GPU); the driver keeps at most ``workers`` in flight.
- A task that raises or whose worker dies is retried ``max_retries`` times, then reported as a failed trial.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile


def trial_task(pyramid, proxy: dict, cache: str, out_dir: str) -> dict:
    """The body of one Ray task: make sure the proxy's data exists on this node, then run the trial."""
    from anytime.search.proxy import ProxyConfig, prepare
    from anytime.search.trial import run_trial

    proxy_cfg = ProxyConfig.from_dict(proxy)
    return run_trial(pyramid, proxy_cfg, prepare(proxy_cfg, cache), out_dir)


class RayRunner:
    def __init__(self, workers: int, address: str | None = None, cpus_per_trial: float = 1.0,
                 gpus_per_trial: float = 0.0, max_retries: int = 2, task=trial_task):
        self.workers, self.address = workers, address
        self.cpus_per_trial, self.gpus_per_trial = cpus_per_trial, gpus_per_trial
        self.max_retries, self.task = max_retries, task
        self.pending: dict = {}  # ObjectRef -> key
        self._reaper: subprocess.Popen | None = None
        self._started = False

    def __enter__(self) -> "RayRunner":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        import ray

        options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                       configure_logging=True)
        if self.address is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local run reports nowhere
            # Ray's session directory (logs, sockets) would stay in /tmp/ray for ever; a directory of this run's
            # own, short enough for Ray's unix sockets, goes with the run: the watchdog removes it, even after a
            # kill -9 of this process.
            temp_dir = tempfile.mkdtemp(prefix="anytime-ray-")
            self._reaper = subprocess.Popen([sys.executable, "-m", "anytime.search.reaper", str(os.getpid()),
                                             temp_dir], stdin=subprocess.PIPE, start_new_session=True)
            cpus = max(1, round(self.workers * self.cpus_per_trial))
            gpus = None if self.gpus_per_trial > 0 else 0  # Ray detects GPUs itself when trials ask for them
            self._started = True
            ray.init(address="local", num_cpus=cpus, num_gpus=gpus, _temp_dir=temp_dir,
                     **options)  # never an existing cluster
        else:
            self._started = True
            ray.init(address=self.address, **{k: v for k, v in options.items() if k != "include_dashboard"})
        self._remote = ray.remote(self.task).options(
            num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial, max_retries=self.max_retries,
            retry_exceptions=True)

    def submit(self, key, *args) -> None:
        self.pending[self._remote.remote(*args)] = key

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def wait(self) -> tuple[object, dict]:
        """(key, result) of the next task to end; a task that failed all its tries gives a failed result."""
        import ray

        (ref,), _ = ray.wait(list(self.pending), num_returns=1)
        key = self.pending.pop(ref)
        try:
            return key, ray.get(ref)
        except Exception as e:  # RayTaskError (the trial raised), WorkerCrashedError, ...
            lines = [line for line in str(e).splitlines() if line.strip()]
            cause = getattr(e, "cause", None)
            what = f"{type(cause).__name__}: {cause}" if cause is not None else (lines[-1] if lines else type(e).__name__)
            return key, {"status": "failed", "reward": None,
                         "error": f"failed after {self.max_retries + 1} tries: {what}"[:500]}

    def close(self) -> None:
        """Stop Ray (only a cluster this runner started) and the watchdog; safe to call twice."""
        if self._started:
            import ray

            self._started = False
            self.pending.clear()
            ray.shutdown()
        if self._reaper is not None:
            reaper, self._reaper = self._reaper, None
            reaper.stdin.close()  # the watchdog kills whatever ray.shutdown() left behind, then exits
            try:
                reaper.wait(timeout=30)
            except subprocess.TimeoutExpired:
                reaper.kill()
