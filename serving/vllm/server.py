"""A vLLM server this process owns: ``prunenet serve`` on a local port, started, health-checked, stopped by PID.

Tests and benchmarks need a server they own: :class:`VllmServer` starts ``prunenet serve`` on a free
port, waits for ``/health`` and stops it by PID (SIGTERM, then SIGKILL). :func:`serve_args` is the
``vllm serve`` argument list ``prunenet serve`` execs with (see :mod:`serving.vllm.__main__`).
"""

from __future__ import annotations

import contextlib
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

from serving.vllm.directory import check_servable
from serving.vllm.errors import ServerError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "VllmServer", "serve_args", "free_port", "ensure_port_free"]

log = logging.getLogger(__name__)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


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


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port the OS considers free right now (tests start servers on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_port_free(host: str, port: int) -> None:
    """Fail in one line before vLLM's long start-up when ``host:port`` is taken."""
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
