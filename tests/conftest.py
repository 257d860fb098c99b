"""Shared fixtures: tiny random models per family and the real default model (integration)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_models import TINY_CONFIGS, make_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny random model directory per supported ``model_type``."""
    root = tmp_path_factory.mktemp("tiny")
    return {mt: make_tiny_model(mt, root / mt) for mt in TINY_CONFIGS}


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The real default model (SmolLM2-135M-Instruct), built into the cache on first use."""
    from prunenet.source import resolve_model

    return resolve_model(None).path
