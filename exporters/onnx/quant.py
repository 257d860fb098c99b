"""Weight precision of an ONNX export: the ``--quant`` schemes, their block size, and a torch reference.

``--quant`` names are shared with the HF/vLLM targets. For ONNX, ``w4a16`` is ONNX Runtime's
``MatMulNBits`` with symmetric 4-bit weights and ``w8a8`` the same operator with 8-bit weights; on
CPU both run with ``accuracy_level=4`` (the activation side of each product is quantized to int8
on the fly, the kernel that makes 4-bit weights pay off). ``fp8`` has no ONNX Runtime CPU kernel
and is refused. The block size (``--quant-group``) must divide every input width K of every
quantized MatMul, or the last block of a row would straddle two rows' worth of padding: it is
checked before any work, against the hidden size, the attention output width and ``--align``
(every FFN width is a multiple of it).

:func:`fake_quantize_` gives a torch model the graph's weights in place (4 bits: the MSE-clipped
scales of :mod:`exporters.onnx.nbits`; 8 bits: ONNX Runtime's round-to-nearest), the reference an
int4/int8 graph is validated against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exporters.onnx.families import check_family
from prunenet.errors import PruneNetError

__all__ = ["QUANT_SCHEMES", "BLOCK_SIZES", "OnnxQuantError", "OnnxOptions", "check_request", "check_target_quant",
           "choose_block",
           "fake_quantize_", "matmul_ks"]

QUANT_SCHEMES: dict[str, int | None] = {"none": None, "w4a16": 4, "w8a8": 8, "fp8": None}
"""--quant name -> weight bits of the ONNX graph (None: float weights; fp8 is refused for ONNX)."""
BLOCK_SIZES = (16, 32, 64, 128, 256)
"""Block sizes ONNX Runtime's MatMulNBits quantizer accepts."""
DEFAULT_BLOCK = 32
"""The builder's and ORT's default: the largest size whose 4-bit error stays small on small models."""


class OnnxQuantError(PruneNetError):
    """The requested ONNX precision cannot be built for this model (refused before any work)."""


@dataclass(frozen=True)
class OnnxOptions:
    """What the ONNX target builds besides the model itself."""

    quant: str = "none"
    group: int | None = None
    """MatMulNBits block size; None: :data:`DEFAULT_BLOCK` (or 16 where 32 does not divide every K)."""
    quantize_head: bool = True
    """Quantize the LM head too (a tied head is re-materialized as its own 4/8-bit weight)."""

    @property
    def bits(self) -> int | None:
        return QUANT_SCHEMES[self.quant]


def matmul_ks(config: dict[str, Any], widths: list[int] | tuple[int, ...] = ()) -> set[int]:
    """Input widths K of the decoder's MatMuls: hidden size, attention output width, FFN widths."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    return {hidden, heads * head_dim, *(int(w) for w in widths)}


def choose_block(ks: set[int], group: int | None) -> int:
    """``group`` if it divides every K, else the default (32, then 16); one-line error otherwise."""
    if group is not None:
        if group not in BLOCK_SIZES:
            raise OnnxQuantError(f"--quant-group {group}: ONNX Runtime's MatMulNBits takes "
                                 f"{', '.join(map(str, BLOCK_SIZES))}")
        bad = sorted(k for k in ks if k % group)
        if bad:
            raise OnnxQuantError(f"--quant-group {group} does not divide the matmul input width(s) "
                                 f"{', '.join(map(str, bad))}; choose one that divides {sorted(ks)}")
        return group
    for block in (DEFAULT_BLOCK, 16):
        if all(k % block == 0 for k in ks):
            return block
    raise OnnxQuantError(f"no MatMulNBits block size divides every matmul input width {sorted(ks)}; "
                         "pass --quant-group or a multiple of 16 as --align")


def check_request(config: dict[str, Any], options: OnnxOptions, align: int, device: str) -> int | None:
    """Refuse what cannot be built, before any work; returns the block size (None without --quant)."""
    if options.quant == "fp8":
        raise OnnxQuantError("--quant fp8 is not available for --target onnx (no ONNX Runtime fp8 matmul "
                             "kernel); use w4a16 or w8a8")
    check_family(config.get("model_type"), quantized=options.quant != "none")
    if options.bits is None:
        if options.group is not None:
            raise OnnxQuantError("--quant-group needs --quant w4a16 or w8a8")
        return None
    if device.startswith("cuda") and options.bits == 8:
        raise OnnxQuantError("--quant w8a8 --target onnx is built for CPU only; use w4a16 on CUDA")
    block = choose_block(matmul_ks(config), options.group)
    if align % block:
        raise OnnxQuantError(f"--align {align} is not a multiple of the block size {block}: pruned FFN widths "
                             f"would not divide into blocks; use --align {block * max(1, align // block)}")
    return block


def check_target_quant(config: dict[str, Any], scheme: str, group: int | None, align: int,
                       device: str) -> int | None:
    """The ONNX target's ``quant_check`` (:class:`exporters.targets.Target`): refuse before any work;
    returns the block size (None without ``--quant``)."""
    from prunenet.device import resolve_device

    return check_request(config, OnnxOptions(quant=scheme, group=group), align, resolve_device(device).type)


def fake_quantize_(model: Any, bits: int, block: int, *, head: bool, scales: str | None = None,
                   given: Any = None) -> None:
    """The graph's weights on every decoder Linear (and the head if ``head``), in place.

    ``scales`` defaults to the graph's: ``"mse"`` for 4 bits, ``"rtn"`` for 8. ``"mse"`` (the 4-bit
    graphs, :mod:`exporters.onnx.nbits`): the decoder's weights get the w4a16 MSE-clipped scales of
    :func:`prunenet.quantization.numerics.fake_quantize`, searched at the weight's precision, and the
    head ONNX Runtime's round-to-nearest. ``"rtn"`` (8 bits, and the 4-bit head; ONNX Runtime's
    rule): per output row and block of K inputs, scale = the block's largest-magnitude value
    / -2^(bits-1), so that value maps to the most negative code, codes clipped to [-2^(bits-1), 2^(bits-1) - 1].
    For a model that ties its embedding to the head the builder stores a 4-bit graph's embedding in 4 bits
    too (round-to-nearest; one matrix with the 4-bit head), whatever ``head``; untied models and 8-bit
    graphs keep it float (ONNX Runtime's quantized Gather takes 4 bits only). ``scales="gptq"``: the
    decoder weights (and the head, when GPTQ rounded it: then the tied embedding is that matrix too) are
    GPTQ's, on the grid of the scales ``given`` (:class:`~exporters.onnx.nbits.RowScales`) holds for them.
    """
    import torch

    from exporters.onnx.nbits import INT4_SCHEME
    from prunenet.quantization.numerics import fake_quantize

    scales = scales or ("mse" if bits == 4 else "rtn")
    if scales not in ("mse", "rtn", "gptq") or (scales in ("mse", "gptq") and bits != 4) or \
            (scales == "gptq") != (given is not None):
        raise ValueError(f"no {scales!r} scales for {bits}-bit weights")
    head_module = model.get_output_embeddings()
    tied = head_module is not None and head_module.weight is model.get_input_embeddings().weight
    head_gptq = False
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear) or (module is head_module and not head):
                continue
            w = module.weight.data
            found = given.lookup(w.float().numpy()) if scales == "gptq" else None
            if found is not None:
                s = torch.from_numpy(found)
                deq = (torch.round(w.float() / s.repeat_interleave(block, dim=1)).clamp(-8, 7)
                       * s.repeat_interleave(block, dim=1))
            elif scales == "gptq" and module is not head_module:
                raise ValueError(f"no GPTQ scales for a {tuple(w.shape)} weight")
            elif scales in ("mse", "gptq") and module is not head_module:
                scale_dtype = torch.float16 if w.dtype == torch.float16 else torch.float32
                deq = fake_quantize(w.float(), INT4_SCHEME, block, "mse", scale_dtype)
            else:
                deq = _round_to_nearest(w.float(), bits, block)
            if module is head_module and module.weight is model.get_input_embeddings().weight:
                module.weight = torch.nn.Parameter(deq.to(module.weight.dtype))  # untie: rounded below if at all
                head_gptq = found is not None
            else:
                module.weight.data.copy_(deq)
        if bits == 4 and tied:
            embed = model.get_input_embeddings().weight
            if head and head_gptq:  # the graph's one 4-bit matrix is the GPTQ-rounded head
                embed.data.copy_(head_module.weight.data)
            else:
                embed.data.copy_(_round_to_nearest(embed.data.float(), 4, block).to(embed.dtype))


def _round_to_nearest(w: Any, bits: int, block: int) -> Any:
    """ONNX Runtime's symmetric blockwise rule (see :func:`fake_quantize_`), dequantized, [N, K] fp32."""
    import torch

    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    rows, k = w.shape
    blocks = w.reshape(rows, k // block, block)
    scale = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True)) / qmin
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.clamp(torch.round(blocks / scale), qmin, qmax) * scale).reshape(rows, k)
