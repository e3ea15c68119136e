"""Runs a real ``tritonserver`` process (the one bundled in the nvidia-pytriton wheel) and keeps it alive.

The bundled server needs some setup that pytriton normally hides: the python-backend stub
for the running CPython copied next to ``libtriton_python.so``, ``python3`` of this interpreter first on
PATH, this interpreter's libpython on LD_LIBRARY_PATH, and the GPU-only features switched off on machines
without a GPU. ``TritonServer`` does all of that, logs to a file, waits for readiness over HTTP, stops
with SIGTERM then SIGKILL, and can supervise the process, restarting it with backoff when it dies.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
CONTROL_MODES = ("none", "explicit", "poll")
STUB_NAME = "triton_python_backend_stub"
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "anytime" / "triton-backends"


class TritonServerError(RuntimeError):
    """tritonserver could not be found, started, or made ready; the message carries the log tail."""


# -- installation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of pytriton's bundled Triton live."""

    package_dir: Path  # .../site-packages/pytriton
    binary: Path  # tritonserver executable
    python_backend_dir: Path  # libtriton_python.so + triton_python_backend_utils.py
    stubs_dir: Path  # python_backend_stubs/<major.minor>/triton_python_backend_stub
    libs_dir: Path  # nvidia_pytriton.libs: the vendored shared libraries (found via $ORIGIN rpaths)
    caches_dir: Path
    version: str

    def stub(self) -> Path:
        return self.stubs_dir / f"{sys.version_info.major}.{sys.version_info.minor}" / STUB_NAME


def ensure_installed() -> Path:
    """Return pytriton's package directory, or a clear error naming the package to install.

    Nothing is installed at run time: a server must not change its own environment (and may have no network).
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.origin:
        raise TritonServerError(
            f"tritonserver comes from the {PYTRITON_REQUIREMENT} wheel, which is not installed in {sys.executable}: "
            f"run scripts/bootstrap, or `{sys.executable} -m pip install {PYTRITON_REQUIREMENT}`")
    return Path(spec.origin).parent


def locate_tritonserver() -> TritonInstall:
    """Find the bundled tritonserver and its backend pieces (without importing pytriton itself)."""
    package = ensure_installed()
    root = package / "tritonserver"
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    install = TritonInstall(
        package_dir=package,
        binary=root / "bin" / "tritonserver",
        python_backend_dir=root / "backends" / "python",
        stubs_dir=root / "python_backend_stubs",
        libs_dir=package.parent / "nvidia_pytriton.libs",
        caches_dir=root / "caches",
        version=version,
    )
    if not os.access(install.binary, os.X_OK):
        raise TritonServerError(f"no executable tritonserver at {install.binary}; reinstall {PYTRITON_REQUIREMENT}")
    if not install.stub().is_file():
        raise TritonServerError(
            f"pytriton {version} ships no python-backend stub for Python "
            f"{sys.version_info.major}.{sys.version_info.minor} (looked for {install.stub()})"
        )
    return install


def prepare_backends(install: TritonInstall | None = None, cache_dir: str | Path | None = None) -> Path:
    """Return a ``--backend-directory`` whose ``python/`` holds the backend plus this CPython's stub.

    Built once per pytriton version and Python version under ``~/.cache/anytime/triton-backends`` (the
    venv is left untouched) and rebuilt if any file differs in size from its source.
    """
    install = install or locate_tritonserver()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    backends = Path(cache_dir or DEFAULT_CACHE) / f"pytriton-{install.version}-py{py}"
    sources = {name: install.python_backend_dir / name for name in PYTHON_BACKEND_FILES}
    sources[STUB_NAME] = install.stub()
    target = backends / "python"

    def complete() -> bool:
        return all((target / n).is_file() and (target / n).stat().st_size == s.stat().st_size for n, s in sources.items())

    if complete():
        return backends
    backends.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".python.", dir=backends))
    try:
        for name, src in sources.items():
            shutil.copyfile(src, staging / name)
        os.chmod(staging / STUB_NAME, 0o755)
        os.chmod(staging, 0o755)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            if not complete():  # not a concurrent twin that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return backends


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver so the python stub embeds *this* interpreter with *its* stdlib."""
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)  # the stub runs `python3` from PATH: this venv's
    env["PATH"] = os.pathsep.join([bindir] + [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir])
    libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(install.libs_dir)]
    existing = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(p for p in libdirs + existing if p))
    return env


def gpu_present() -> bool:
    """Whether an NVIDIA GPU device node exists (cheap; no CUDA initialisation)."""
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0"))


# -- ports --------------------------------------------------------------------------------------------


# Where servers write their logs unless told otherwise: the current directory's runs/ (ignored by git, where every
# run of this project writes), never the system's temp directory, which nobody cleans and nobody reads.
DEFAULT_LOG_DIR = Path("runs/logs")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (for tests and ad-hoc servers)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free TCP ports (all sockets held open until every port is picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# -- the server ---------------------------------------------------------------------------------------


@dataclass
class TritonConfig:
    """How to run tritonserver. Ports bind to ``host`` (loopback unless asked otherwise)."""

    repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    model_control_mode: str = "none"  # none | explicit | poll
    load_models: tuple[str, ...] = ()  # explicit mode: models loaded at startup ("*" = all)
    log_file: Path | None = None  # None: a fresh file in DEFAULT_LOG_DIR
    log_verbose: int = 0
    gpu: bool | None = None  # None: detect
    exit_timeout_s: int = 10  # how long Triton drains in-flight requests on SIGTERM
    stop_grace_s: float = 15.0  # after SIGTERM, SIGKILL once this passes
    ready_timeout_s: float = 60.0  # used by the context manager
    restart: bool = False  # supervise: restart the server whenever it dies
    max_restarts: int | None = None  # None: unlimited
    restart_backoff_s: float = 0.5  # first delay; doubles per consecutive crash up to the max
    restart_backoff_max_s: float = 30.0
    stable_after_s: float = 60.0  # an instance that ran this long resets the backoff
    # With ``restart``, a server that is alive but no longer serves is killed and restarted too (``_watch``): Triton
    # 2.51 (PyPI's bundle) can abort in its gRPC frontend when clients cancel calls under load (a race fixed upstream
    # in triton-inference-server/server#7840, r24.12), and its fatal-signal handler then hangs instead of exiting.
    # It writes "Signal (N) received." first: that line kills it at once; a gRPC liveness check that fails this
    # many times in a row (each waiting up to ``liveness_timeout_s``) catches any other hang.
    liveness_failures: int = 3
    liveness_timeout_s: float = 2.0
    cache_dir: Path | None = None  # where the prepared backends directory lives
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.repository = Path(self.repository)
        if self.log_file is not None:
            self.log_file = Path(self.log_file)
        if self.model_control_mode not in CONTROL_MODES:
            raise ValueError(f"model_control_mode must be one of {CONTROL_MODES}, got {self.model_control_mode!r}")
        if self.load_models and self.model_control_mode != "explicit":
            raise ValueError("load_models needs model_control_mode='explicit'")
        self.load_models = tuple(self.load_models)
        ports = [self.http_port, self.grpc_port, self.metrics_port]
        if len(set(ports)) != 3:
            raise ValueError(f"http, grpc and metrics ports must differ, got {ports}")


class TritonServer:
    """One tritonserver process (optionally supervised); use as a context manager or start()/stop()."""

    def __init__(self, config: TritonConfig | str | Path, **options) -> None:
        if isinstance(config, TritonConfig):
            self.config = dataclasses.replace(config, **options) if options else config
        else:
            self.config = TritonConfig(repository=Path(config), **options)
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._log_handle = None
        self._started_at = 0.0
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._gave_up = False
        self._shm_prefix = f"anytime_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.log_file = self.config.log_file or DEFAULT_LOG_DIR / f"tritonserver-{self.config.http_port}-{os.getpid()}.log"
        self.install: TritonInstall | None = None
        self.backends_dir: Path | None = None

    # endpoints (clients connect to loopback when the server listens on every interface)
    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host

    @property
    def http_url(self) -> str:
        return f"{self.client_host}:{self.config.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.client_host}:{self.config.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.config.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def gave_up(self) -> bool:
        """True once the supervisor stopped restarting (``max_restarts`` reached)."""
        return self._gave_up

    def is_alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def command(self) -> list[str]:
        """The tritonserver command line (prepares the installation on first use)."""
        cfg = self.config
        if self.install is None:
            self.install = locate_tritonserver()
            self.backends_dir = prepare_backends(self.install, cfg.cache_dir)
        gpu = gpu_present() if cfg.gpu is None else cfg.gpu
        cmd = [
            str(self.install.binary),
            f"--model-repository={cfg.repository.resolve()}",
            f"--backend-directory={self.backends_dir}",
            f"--cache-directory={self.install.caches_dir}",
            f"--http-address={cfg.host}",
            f"--http-port={cfg.http_port}",
            f"--grpc-address={cfg.host}",
            f"--grpc-port={cfg.grpc_port}",
            f"--metrics-address={cfg.host}",
            f"--metrics-port={cfg.metrics_port}",
            f"--model-control-mode={cfg.model_control_mode}",
            *[f"--load-model={name}" for name in cfg.load_models],
            "--exit-on-error=false",
            f"--exit-timeout-secs={cfg.exit_timeout_s}",
            f"--log-verbose={cfg.log_verbose}",
            # a per-server shm prefix lets us delete the regions a killed server leaves in /dev/shm
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        if not gpu:
            cmd += ["--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0"]
        return cmd + list(cfg.extra_args)

    # lifecycle
    def start(self) -> "TritonServer":
        """Launch tritonserver (and the supervisor when ``restart``); does not wait for readiness."""
        with self._lock:
            if self.is_alive():
                return self
            if not self.config.repository.is_dir():
                raise TritonServerError(f"model repository {self.config.repository} is not a directory")
            self._stopping.clear()
            self._gave_up = False
            self._spawn()
            if self.config.restart and (self._supervisor is None or not self._supervisor.is_alive()):
                self._supervisor = threading.Thread(target=self._supervise, name="tritonserver-supervisor", daemon=True)
                self._supervisor.start()
        return self

    def _spawn(self) -> None:
        cmd = self.command()
        env = server_env(self.install)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self._log_handle is None:
            self._log_handle = open(self.log_file, "ab", buffering=0)
        self._log_handle.write(f"\n=== anytime: starting tritonserver: {' '.join(cmd)}\n".encode())
        self._proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: Ctrl-C reaches us only, and killpg takes the stubs too
        )
        self._started_at = time.monotonic()
        log.info("tritonserver pid %d (http %s, grpc %s), log %s", self._proc.pid, self.http_url, self.grpc_url, self.log_file)

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Block until /v2/health/ready says yes; returns seconds waited.

        Raises TritonServerError with the last 40 log lines if the process dies (and is not supervised) or
        the timeout passes.
        """
        import tritonclient.http as httpclient

        t0 = time.monotonic()
        client = httpclient.InferenceServerClient(self.http_url, connection_timeout=2.0, network_timeout=2.0)
        try:
            while True:
                proc = self._proc
                if proc is None:
                    raise TritonServerError("tritonserver was not started")
                rc = proc.poll()
                if rc is not None and (not self.config.restart or self._gave_up or self._stopping.is_set()):
                    raise TritonServerError(f"tritonserver exited with status {rc} before it was ready; log {self.log_file}:\n{self.log_tail()}")
                if rc is None:
                    try:
                        if client.is_server_ready():
                            return time.monotonic() - t0
                    except Exception:  # not listening yet
                        pass
                if time.monotonic() - t0 > timeout:
                    raise TritonServerError(f"tritonserver not ready after {timeout:.0f}s; log {self.log_file}:\n{self.log_tail()}")
                time.sleep(0.1)
        finally:
            client.close()

    def is_ready(self) -> bool:
        import tritonclient.http as httpclient

        if not self.is_alive():
            return False
        client = httpclient.InferenceServerClient(self.http_url, connection_timeout=2.0, network_timeout=2.0)
        try:
            return bool(client.is_server_ready())
        except Exception:
            return False
        finally:
            client.close()

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; stops supervision. Returns the exit status."""
        grace = self.config.stop_grace_s if grace is None else grace
        self._stopping.set()
        with self._lock:
            proc = self._proc
        rc = None
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    rc = proc.wait(grace)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, grace)
                    _killpg(proc.pid)
                    rc = proc.wait()
            else:
                rc = proc.returncode
            _killpg(proc.pid)  # stubs left behind, if any
            self._cleanup_shm()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=5)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        return rc

    def _supervise(self) -> None:
        backoff = self.config.restart_backoff_s
        watch = _Watch(self)
        while not self._stopping.is_set():
            proc = self._proc
            try:
                rc = proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                reason = watch.check(proc)
                if reason and not self._stopping.is_set():
                    self._note(f"tritonserver pid {proc.pid} {reason}: killing it")
                    _killpg(proc.pid)
                continue
            watch.reset()
            if self._stopping.is_set():
                return
            uptime = time.monotonic() - self._started_at
            _killpg(proc.pid)
            self._cleanup_shm()
            if self.config.max_restarts is not None and self.restarts >= self.config.max_restarts:
                self._note(f"tritonserver exited with status {rc}; giving up after {self.restarts} restarts")
                self._gave_up = True
                return
            if uptime >= self.config.stable_after_s:
                backoff = self.config.restart_backoff_s
            self._note(f"tritonserver exited with status {rc} after {uptime:.1f}s; restarting in {backoff:.1f}s")
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self.config.restart_backoff_max_s)
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self._spawn()
                except Exception as e:  # e.g. the binary vanished: keep trying with backoff
                    self._note(f"restart failed: {e}")
                    continue
                self.restarts += 1

    def _note(self, message: str) -> None:
        log.warning(message)
        handle = self._log_handle
        if handle is not None:
            try:
                handle.write(f"=== anytime: {message}\n".encode())
            except ValueError:  # closed by a concurrent stop()
                pass

    def _cleanup_shm(self) -> None:
        shm = Path("/dev/shm")
        if shm.is_dir():
            for p in shm.glob(f"{self._shm_prefix}*"):
                p.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256 * 1024))
                tail = deque(f.read().decode("utf-8", errors="replace").splitlines(), maxlen=lines)
        except OSError:
            return "(no log)"
        return "\n".join(tail)

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            self.wait_ready(self.config.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


FATAL_SIGNAL = b"Signal ("  # Triton's handler of SIGSEGV/SIGABRT writes "Signal (11) received." before it hangs


class _Watch:
    """The supervisor's check that a running server still serves: a fatal-signal line in its log since it was
    spawned, ``liveness_failures`` gRPC liveness checks in a row that fail (once it has answered one), or no
    readiness ``ready_timeout_s`` after it started."""

    def __init__(self, server: "TritonServer", interval_s: float = 1.0):
        self.server, self.interval_s = server, interval_s
        self.reset()

    def reset(self) -> None:
        self.pid = None
        self.offset = None
        self.failures = 0
        self.answered = False
        self.ready_seen = False
        self.next_check = 0.0

    def check(self, proc: subprocess.Popen) -> str | None:
        if proc.pid != self.pid:  # a new process: read its log from here on
            self.reset()
            self.pid = proc.pid
            self.offset = self._log_size()
        now = time.monotonic()
        if now < self.next_check:
            return None
        self.next_check = now + self.interval_s
        if self._fatal_line():
            return "wrote a fatal signal to its log"
        cfg = self.server.config
        if not self.ready_seen:  # a restart whose models never finish loading (a stub stuck at start) is a hang too
            if self._ask("is_server_ready", cfg.liveness_timeout_s):
                self.ready_seen = True
            elif now - self.server._started_at > cfg.ready_timeout_s:
                return f"was not ready {cfg.ready_timeout_s:.0f} s after it started"
        if self._ask("is_server_live", cfg.liveness_timeout_s):
            self.failures, self.answered = 0, True
            return None
        self.failures += self.answered
        if self.failures >= cfg.liveness_failures:
            return f"failed {self.failures} liveness checks in a row"
        return None

    def _log_size(self) -> int:
        try:
            return self.server.log_file.stat().st_size
        except OSError:
            return 0

    def _fatal_line(self) -> bool:
        try:
            with open(self.server.log_file, "rb") as f:
                f.seek(self.offset)
                new = f.read(1 << 20)
        except OSError:
            return False
        # keep the tail of a partial line for the next read
        cut = new.rfind(b"\n") + 1
        self.offset += cut
        return FATAL_SIGNAL in new[:cut] and b" received" in new[:cut]

    def _ask(self, question: str, timeout: float) -> bool:
        import tritonclient.grpc as grpcclient

        try:
            client = grpcclient.InferenceServerClient(self.server.grpc_url)
        except Exception:
            return False
        try:
            return bool(getattr(client, question)(client_timeout=timeout))
        except Exception:
            return False
        finally:
            client.close()


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
