"""The quality report of an ONNX export: the graph's own logits against the dense source.

Scoring the HF weights the graph was built from would hide what the graph itself costs (4-bit
weights, int8 activations in MatMulNBits). So the dense model is streamed layer by layer as in
``prunenet eval`` and the pruned side is the exported graph run by ONNX Runtime, one uncached pass
per window, on the same windows of the bundled reference text.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from exporters.onnx.decoders import OrtDecoder

__all__ = ["evaluate_onnx_dir", "quality_report"]


def evaluate_onnx_dir(onnx_dir: Path, source: Path, *, device: str = "cpu", max_tokens: int = 8192):
    """A :class:`~prunenet.evaluation.report.QualityReport` of ``onnx_dir``'s graph vs the dense ``source``."""
    import torch

    from prunenet.device import layer_dtype, resolve_device
    from prunenet.evaluation.directories import default_seq_len
    from prunenet.evaluation.report import Totals
    from prunenet.evaluation.scoring import dense_window, score_window
    from prunenet.evaluation.windows import token_windows
    from prunenet.progress import status
    from prunenet.source.checkpoint import Checkpoint
    from prunenet.source.layerwise import LayerwiseModel
    from prunenet.source.loaders import load_tokenizer
    from prunenet.texts import reference_text

    dev = resolve_device(device)
    seq_len = default_seq_len(source)
    windows = token_windows(load_tokenizer(source), reference_text("default"), seq_len, max_tokens)
    rows = [w.reshape(1, -1) for w in windows]
    start = time.perf_counter()
    # fp32 on the CPU, whatever the checkpoint: the graph computes in fp32 there, and a bf16 reference
    # alone would cost top-1 agreement (0.96 for an fp32 graph that matches fp32 torch token for token)
    dtype = torch.float32 if dev.type == "cpu" else layer_dtype(Checkpoint(source).dtype, dev)
    dense = LayerwiseModel(source, device=dev, dtype=dtype)
    hidden = dense.final_hidden(rows, label="Scoring the dense model, layer by layer")
    graph = OrtDecoder(onnx_dir, device=dev.type)
    totals = Totals()
    with status("Scoring the ONNX graph"):
        for row, h in zip(rows, hidden, strict=True):
            entry = dense_window(dense.logits(row, h)[0].float().cpu(), row[0], torch.float32)
            ids = row.numpy().astype(np.int64)
            logits = graph.forward(ids, np.ones_like(ids), np.arange(ids.shape[1])[None])
            totals.add(entry, score_window(entry, torch.from_numpy(logits[0]).float()))
    graph.close()
    meta = {"text": "reference (default slice)", "pruned": str(onnx_dir), "reference": str(source),
            "scored": "the ONNX graph's logits (ONNX Runtime)"}
    return totals.report(len(windows), max(w.numel() for w in windows), time.perf_counter() - start, meta)


def quality_report(out: Path, source: Path, device: str) -> dict:
    """The ONNX target's ``scorer`` (:class:`exporters.targets.Target`): the report as a dict."""
    return evaluate_onnx_dir(Path(out), Path(source), device=device).to_dict()
