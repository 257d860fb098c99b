"""The ``serve`` command: put an exported directory behind vLLM's OpenAI-compatible server.

It checks the directory (one-line errors instead of a failure after a long vLLM start-up), sets
the CPU-friendly defaults of :mod:`serving.vllm.runtime`, then replaces itself with vLLM's server
(``exec``), so the PID a caller holds is the server's and signals reach vLLM directly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .common import handle_errors, setup_output, verbosity_options

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command(
    "serve",
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Example:
  prunenet-export --ratio 0.3 --target vllm --out smol-pruned
  prunenet serve smol-pruned --max-model-len 2048
  curl -s 127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "smol-pruned", "prompt": "The capital of France is", "max_tokens": 16}'
\b
  # any other vLLM option goes after --
  prunenet serve smol-pruned -- --max-num-seqs 8 --api-key secret""",
)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback exposes the API to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--max-model-len", type=click.IntRange(1), default=None,
              help="Context length to serve (default: the model's). Smaller needs less KV cache.")
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default=None,
              help="Weight/activation dtype (vLLM default: auto, bf16 on CPU).")
@click.option("--name", default=None, help="Model name clients send (default: the directory's name).")
@click.option("--enforce-eager", is_flag=True, help="Skip torch.compile (faster start-up, slower decoding).")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
@verbosity_options
@handle_errors
def command(out: Path, host: str, port: int, max_model_len: int | None, dtype: str | None, name: str | None,
            enforce_eager: bool, vllm_args: tuple[str, ...], quiet: bool, verbose: int) -> None:
    """Serve an exported model directory OUT with vLLM's OpenAI-compatible API.

    Pruned exports with per-layer FFN widths are served by the prunenet vLLM plugin (installed
    with this package); uniform or padded exports are stock vLLM models. Runs in the foreground
    until Ctrl-C or SIGTERM. Extra vLLM options go after `--`.
    """
    from serving.vllm.directory import check_servable
    from serving.vllm.runtime import bind_parallel_ranks, device_warning, server_env
    from serving.vllm.server import ensure_port_free, serve_args

    setup_output(quiet, verbose)
    config = check_servable(out)
    ensure_port_free(host, port)
    env = server_env()
    bind_parallel_ranks(env, vllm_args)
    warning = device_warning(config)
    if quiet or verbose:
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING" if quiet else "DEBUG")
    args = serve_args(out, host=host, port=port, max_model_len=max_model_len, dtype=dtype, name=name,
                      enforce_eager=enforce_eager, extra=vllm_args)
    served = name or out.resolve().name
    if not quiet:
        click.echo(f"Serving {out} as '{served}' on http://{host}:{port}/v1 (Ctrl-C stops)", err=True)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if host not in _LOOPBACK:
        click.echo(f"warning: listening on {host}: the API is reachable from the network "
                   "(add `-- --api-key KEY` to require a key)", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "serving.vllm", *args], env)
