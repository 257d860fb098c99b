"""Optional statistics from text the model generates itself (``--self-data TOKENS``).

No user or external data: the dense model samples a few continuations of neutral prompts with
a fixed seed, then the FFN inputs it produces on that text are captured per layer. They replace
the synthetic Gaussian inputs of the output reward, so the reward sees the real (heavy-tailed)
hidden-state distribution, including massive-activation dimensions.
"""

from __future__ import annotations

import torch

from prunenet.arch import ArchSpec
from prunenet.progress import status

__all__ = ["generate_self_text", "capture_ffn_inputs"]


def generate_self_text(model, tokenizer, tokens: int, seed: int = 0, sample_len: int = 128) -> list[torch.Tensor]:
    """About ``tokens`` tokens the model samples itself, as id rows (one per sample, document start first)."""
    from prunenet.texts import document_start_id, self_generated_text

    n = max(1, -(-tokens // sample_len))
    with status(f"Generating {n} x {sample_len} tokens of self-text"):
        texts = self_generated_text(model, tokenizer, n_samples=n, n_tokens=sample_len, seed=seed)
    start = document_start_id(tokenizer)
    prefix = [start] if start is not None else []
    return [torch.tensor([prefix + tokenizer(t, add_special_tokens=False)["input_ids"]]) for t in texts]


def capture_ffn_inputs(
    model, spec: ArchSpec, ids: list[torch.Tensor], max_rows: int = 4096, seed: int = 0
) -> tuple[list[torch.Tensor], list[float]]:
    """FFN inputs (rows = tokens) of every layer on ``ids``, subsampled to ``max_rows``, and the
    mean squared norm of the residual stream entering each layer (what an FFN error is relative to)."""
    n_layers = spec.num_layers(model.config)
    captured: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    residual = [[0.0, 0] for _ in range(n_layers)]

    def grab_ffn(i):
        return lambda m, args: captured[i].append(args[0].detach().float())

    def grab_residual(i):
        def hook(m, args, kwargs):
            h = (args[0] if args else kwargs["hidden_states"]).detach().float()
            residual[i][0] += float(h.pow(2).sum())
            residual[i][1] += h.numel() // h.shape[-1]
        return hook

    hooks = []
    for i in range(n_layers):
        ffn = model.get_submodule(spec.layer_name(i, spec.state).removesuffix(".weight"))
        hooks.append(ffn.register_forward_pre_hook(grab_ffn(i)))
        layer = model.get_submodule(f"{spec.layers_prefix}.{i}")
        hooks.append(layer.register_forward_pre_hook(grab_residual(i), with_kwargs=True))
    try:
        with status("Capturing FFN inputs on self-text"), torch.no_grad():
            for row in ids:
                model(row)
    finally:
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(seed)
    out = []
    for rows in captured:
        X = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows])
        if X.shape[0] > max_rows:
            X = X[torch.randperm(X.shape[0], generator=g)[:max_rows]]
        out.append(X)
    return out, [total / max(count, 1) for total, count in residual]
