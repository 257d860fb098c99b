"""Optional statistics from text the model generates itself (``--self-data TOKENS``).

No user or external data: the dense model samples a few continuations of neutral prompts with
a fixed seed, then the FFN inputs it produces on that text are captured per layer. They replace
the synthetic inputs of the output reward, so the reward sees the real (heavy-tailed) hidden-state
distribution, including massive-activation dimensions.

Generation needs the whole model (it is autoregressive) and runs on ``--device`` in the checkpoint's
own dtype. The capture does not: :func:`stream_ffn_inputs` runs the generated ids through one
onloaded layer at a time (:class:`~prunenet.source.layerwise.LayerwiseModel`) and yields each layer's
inputs as soon as they exist, so the caller can reduce them to a summary before the next layer.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import torch

from prunenet.progress import status, track

__all__ = ["generate_self_text", "self_text_ids", "stream_ffn_inputs", "SAMPLE_LEN", "CAPTURE_ROWS",
           "self_text_bytes", "capture_bytes"]

SAMPLE_LEN = 128
"""Tokens per self-text sample; ``--self-data N`` asks for ceil(N / SAMPLE_LEN) samples."""
CAPTURE_ROWS = 4096
"""Captured FFN-input rows kept per layer (a random subsample when the text is longer)."""


def generate_self_text(model, tokenizer, tokens: int, seed: int = 0, sample_len: int = SAMPLE_LEN) -> list[torch.Tensor]:
    """About ``tokens`` tokens the model samples itself, as id rows (one per sample, document start first)."""
    from prunenet.texts import document_start_id, self_generated_text

    n = max(1, -(-tokens // sample_len))
    with status(f"Generating {n} x {sample_len} tokens of self-text on {model.device.type}"):
        texts = self_generated_text(model, tokenizer, n_samples=n, n_tokens=sample_len, seed=seed)
    start = document_start_id(tokenizer)
    prefix = [start] if start is not None else []
    return [torch.tensor([prefix + tokenizer(t, add_special_tokens=False)["input_ids"]]) for t in texts]


def self_text_ids(source: Path, tokens: int, seed: int, device: torch.device, dtype: torch.dtype,
                  sample_len: int = SAMPLE_LEN) -> list[torch.Tensor]:
    """Load the dense model on ``device`` in ``dtype``, sample the self-text, free the model."""
    from prunenet.source.checkpoint import Checkpoint
    from prunenet.source.loaders import load_causal_lm, load_tokenizer

    kwargs: dict = {}
    if device.type == "cuda":
        need = Checkpoint(source).num_parameters() * torch.finfo(dtype).bits // 8
        free, _ = torch.cuda.mem_get_info(device)
        if need > 0.85 * free:  # does not fit the GPU: accelerate places what fits there, the rest on the host
            kwargs = {"device_map": "auto", "max_memory": {device.index or 0: int(0.85 * free), "cpu": "1000GiB"}}
    model = load_causal_lm(source, dtype=dtype, device=None if kwargs else device, check=False, **kwargs)
    try:
        return generate_self_text(model, load_tokenizer(source), tokens, seed=seed, sample_len=sample_len)
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def stream_ffn_inputs(
    source: Path, ids: list[torch.Tensor], *, device: torch.device, dtype: torch.dtype, max_rows: int = CAPTURE_ROWS,
    seed: int = 0,
) -> Iterator[tuple[int, torch.Tensor, float]]:
    """Yield ``(layer, X, residual)`` for every layer, in order, one onloaded layer at a time.

    ``X`` are the FFN inputs (rows = tokens, fp32, on the CPU) on ``ids``, subsampled to ``max_rows``;
    ``residual`` is the mean squared norm of the residual stream entering the layer (what an FFN
    error is relative to).
    """
    from prunenet.source.layerwise import LayerwiseModel

    lm = LayerwiseModel(source, device=device, dtype=dtype)
    ffn_module = lm.spec.state.removesuffix(".weight")
    g = torch.Generator().manual_seed(seed)
    with status("Preparing layer-by-layer capture"):
        hidden, kwargs = lm.prepare(ids)
    for i in track(range(lm.num_layers), "Capturing FFN inputs on self-text", total=lm.num_layers):
        total, count = 0.0, 0
        for h in hidden:
            hf = h.detach().float()
            total += float(hf.pow(2).sum())
            count += hf.numel() // hf.shape[-1]
        rows: list[torch.Tensor] = []
        with lm.layer(i) as module:
            hook = module.get_submodule(ffn_module).register_forward_pre_hook(
                lambda m, args, rows=rows: rows.append(args[0].detach().float().cpu()))
            try:
                hidden = lm.forward_layer(module, i, hidden, kwargs)
            finally:
                hook.remove()
        X = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows])
        if X.shape[0] > max_rows:
            X = X[torch.randperm(X.shape[0], generator=g)[:max_rows]]
        yield i, X, total / max(count, 1)


def self_text_bytes(config: dict, layers: int, model_bytes: int, tokens: int, whole: int) -> int:
    """Peak bytes of :func:`self_text_ids`: the whole model (``model_bytes``) generating ``tokens``."""
    from prunenet.memory import generation_bytes

    samples = -(-max(tokens, 1) // SAMPLE_LEN)
    return generation_bytes(config, layers, model_bytes, samples, SAMPLE_LEN, whole)


def capture_bytes(rest: int, per_layer: int, m: int, d: int, tokens: int) -> int:
    """Peak bytes of :func:`stream_ffn_inputs` with the planner's summary of each layer: one onloaded
    layer (``per_layer``) beside the embeddings and head (``rest``), the layer's FFN read again in fp32,
    and the captured rows and their activations."""
    rows = min(CAPTURE_ROWS, max(tokens, 1))
    return rest + 2 * per_layer + 3 * m * d * 4 + 3 * rows * max(m, d) * 4
