"""onnxruntime-genai on an exported directory: the ``genai_config.json`` we ship, and a decoder over its generator.

The builder's ``genai_config.json`` leaves ONNX Runtime's session options to onnxruntime-genai.
:func:`tune_genai_config` writes the two a plain ORT loop runs with by default (intra- and
inter-op threads spinning between calls) so the generator's session is configured like the plain
loop's, checks the builder's model fields against ``config.json``, and leaves the thread count to
ONNX Runtime (one per physical core) so the directory fits the machine it runs on; ``prunenet
bench`` overlays ``--threads`` on both engines alike. docs/onnx.md has the side-by-side timings.

:class:`GenaiDecoder` runs ``og.Generator`` with greedy search and no early stop, recording the
same :class:`~exporters.onnx.greedy.Generation` as the other engines: the prompt pass is
``append_tokens``; each ``generate_next_token`` after the first is one decode step plus sampling.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from exporters.onnx.greedy import EngineError, Generation

__all__ = ["GENAI_CONFIG", "SESSION_OPTIONS", "tune_genai_config", "read_genai_config", "GenaiDecoder"]

GENAI_CONFIG = "genai_config.json"
SESSION_OPTIONS: dict[str, Any] = {"session.intra_op.allow_spinning": "1", "session.inter_op.allow_spinning": "1"}
"""Written into ``model.decoder.session_options``: keep ORT's spinning threads between decode steps."""


def read_genai_config(onnx_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(onnx_dir) / GENAI_CONFIG).read_text())
    except (OSError, ValueError):
        return {}


def tune_genai_config(onnx_dir: Path, hf_config: dict[str, Any]) -> dict[str, Any]:
    """Add :data:`SESSION_OPTIONS`, check the builder's fields against ``hf_config``; returns the config."""
    path = Path(onnx_dir) / GENAI_CONFIG
    config = json.loads(path.read_text())
    decoder = config["model"]["decoder"]
    decoder.setdefault("session_options", {}).update(SESSION_OPTIONS)
    expected = {"num_hidden_layers": hf_config["num_hidden_layers"], "hidden_size": hf_config["hidden_size"],
                "num_attention_heads": hf_config["num_attention_heads"],
                "num_key_value_heads": hf_config.get("num_key_value_heads") or hf_config["num_attention_heads"]}
    wrong = {k: (decoder.get(k), v) for k, v in expected.items() if decoder.get(k) != v}
    if wrong or config["model"].get("vocab_size") != hf_config["vocab_size"]:
        raise EngineError(f"{path}: the builder's config disagrees with config.json: {wrong}")
    path.write_text(json.dumps(config, indent=4) + "\n")
    return config


class GenaiDecoder:
    """An exported directory run by onnxruntime-genai's own generator (greedy, fixed length)."""

    name = "onnxruntime-genai"

    def __init__(self, onnx_dir: Path, *, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime_genai as og

        if not (Path(onnx_dir) / GENAI_CONFIG).is_file():
            raise EngineError(f"{onnx_dir}: no {GENAI_CONFIG}; export it with prunenet export --target onnx")
        config = og.Config(str(onnx_dir))
        if threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        if not device.startswith("cuda"):
            config.clear_providers()
        self._og = og
        self.model = og.Model(config)

    def generate(self, input_ids: np.ndarray, new_tokens: int, *, keep_logits: bool = False,
                 stop_at_eos: bool = False) -> Generation:
        """``new_tokens`` greedy tokens; end-of-text is suppressed (fixed work for timing) unless ``stop_at_eos``,
        which returns the tokens up to and including it, with the model's logits untouched."""
        og = self._og
        batch, prompt = input_ids.shape
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=prompt + new_tokens, batch_size=batch,
                                  min_length=prompt if stop_at_eos else prompt + new_tokens)
        generator = og.Generator(self.model, params)
        tokens = np.zeros((batch, new_tokens), dtype=np.int64)
        kept: list[np.ndarray] = []
        steps: list[float] = []
        start = time.perf_counter()
        generator.append_tokens(np.ascontiguousarray(input_ids, dtype=np.int32))
        prefill_s = time.perf_counter() - start
        first_token_s = prefill_s
        for i in range(new_tokens):
            if generator.is_done():
                tokens = tokens[:, :i]
                break
            t0 = time.perf_counter()
            generator.generate_next_token()  # runs the model on the previous token (not the first time), samples
            elapsed = time.perf_counter() - t0
            if keep_logits:  # only now are the logits that chose this token the graph's output
                kept.append(np.asarray(generator.get_output("logits"), dtype=np.float32)[:, -1])
            tokens[:, i] = np.asarray(generator.get_next_tokens())
            if i == 0:
                first_token_s = time.perf_counter() - start
            else:
                steps.append(elapsed)
        return Generation(tokens, prefill_s, first_token_s, steps, [0.0] * new_tokens,
                          time.perf_counter() - start, kept if keep_logits else None)

    def close(self) -> None:
        self.model = None
