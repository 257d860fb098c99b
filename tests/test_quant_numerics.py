"""Quantization numerics and packing: our scales and rounding against compressed-tensors' own decompressor."""

from __future__ import annotations

import pytest
import torch

from prunenet.quantization.checks import QuantizationError, resolve_quant, width_multiple
from prunenet.quantization.numerics import compute_scales, dequantize, fake_quantize, quantize
from prunenet.quantization.schemes import SCHEMES, QuantSpec


def _weight(n: int = 64, k: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    w[3, 5] = 0.5  # an outlier: what clipping is for
    return w


@pytest.mark.parametrize(("name", "group"), [("w8a8", None), ("w4a16", 32), ("w4a16", 64), ("fp8", None)])
def test_packing_round_trips_through_compressed_tensors(name, group):
    from exporters.hf.quantized import StreamingQuantizer
    from exporters.hf.shards import TensorSpec
    from prunenet.quantization.compressed import compressed_reader

    spec = QuantSpec(name, group)
    w = _weight()
    q = StreamingQuantizer(spec, {"m.weight"}, torch.float32)
    outs = q.expand(TensorSpec("m.weight", torch.float32, tuple(w.shape)))
    written = {o.name: q.produce(o.name, lambda _: w) for o in reversed(outs)}  # scale first, as the writer may
    for o in outs:
        assert written[o.name].dtype == o.dtype and tuple(written[o.name].shape) == o.shape, o.name
    reader = compressed_reader({"quantization_config": spec.ct_config()})
    (name_out, rebuilt), = reader.tensors(list(written), written.__getitem__)
    assert name_out == "m.weight"
    expected = fake_quantize(w, SCHEMES[name], group)
    torch.testing.assert_close(rebuilt.float(), expected, rtol=0, atol=0)
    assert not q._scales  # nothing kept once every part is out


def test_scales_per_channel_and_group_shapes():
    w = _weight()
    assert compute_scales(w, SCHEMES["w8a8"]).shape == (64, 1)
    assert compute_scales(w, SCHEMES["w4a16"], 32).shape == (64, 4)
    with pytest.raises(ValueError):
        compute_scales(w, SCHEMES["w4a16"], 48)  # 128 columns


def test_minmax_keeps_every_weight_on_the_grid_without_clipping():
    w = _weight()
    s = compute_scales(w, SCHEMES["w8a8"], clipping="minmax")
    q = quantize(w, s, SCHEMES["w8a8"])
    assert q.abs().max().item() == 127  # the largest magnitude maps exactly onto the grid's end
    assert (dequantize(q, s) - w).abs().max() <= s.max() / 2 + 1e-7


def test_mse_clipping_never_loses_to_minmax_and_wins_at_4_bits():
    w = _weight()
    scheme = SCHEMES["w4a16"]
    err = {c: (fake_quantize(w, scheme, 32, c) - w).pow(2).sum(dim=1) for c in ("minmax", "mse")}
    assert (err["mse"] <= err["minmax"] + 1e-12).all()
    assert err["mse"].sum() < 0.9 * err["minmax"].sum()


def test_zero_rows_quantize_to_zero_not_nan():
    w = torch.zeros(8, 64)
    for name, group in (("w8a8", None), ("w4a16", 32), ("fp8", None)):
        out = fake_quantize(w, SCHEMES[name], group)
        assert torch.equal(out, w), name


def test_int8_error_is_small_and_4bit_larger():
    w = _weight()
    rel = {n: ((fake_quantize(w, SCHEMES[n], g) - w).norm() / w.norm()).item()
           for n, g in (("w8a8", None), ("w4a16", 32))}
    assert rel["w8a8"] < 0.01 < rel["w4a16"] < 0.2


# ------------------------------------------------------------------ alignment and groups

SMOL = {"num_attention_heads": 9, "num_key_value_heads": 3}


def _linears(hidden: int = 576, ffn: int = 1536, kv: int = 192) -> dict[str, tuple[int, int]]:
    p = "model.layers.0."
    return {p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden), p + "mlp.gate_proj.weight": (ffn, hidden),
            p + "mlp.down_proj.weight": (hidden, ffn)}


def test_group_defaults_to_largest_dividing_every_k_per_rank():
    assert resolve_quant("w4a16", None, SMOL, _linears()).group == 64  # 576 is not a multiple of 128
    assert resolve_quant("w4a16", None, SMOL, _linears(hidden=1024, kv=256, ffn=2048)).group == 128
    assert resolve_quant("w4a16", None, SMOL, _linears(), tp=(2,)).group == 32  # 288 per rank
    assert resolve_quant("w8a8", None, SMOL, _linears()).group is None


def test_width_step_covers_group_and_tp():
    spec = resolve_quant("w4a16", None, SMOL, _linears())
    assert width_multiple(spec) == 64
    assert width_multiple(spec, (2,)) == 128
    assert width_multiple(resolve_quant("w8a8", None, SMOL, _linears())) == 16
    assert width_multiple(None, (2,)) == 1


@pytest.mark.parametrize(("args", "expect"), [
    (("w4a16", 128, SMOL, _linears()), "does not divide K=576"),
    (("w4a16", 40, SMOL, _linears()), "does not divide K=576"),
    (("w8a8", 64, SMOL, _linears()), "grouped schemes"),
    (("none", 64, SMOL, _linears()), "needs --quant"),
    (("w4a16", None, SMOL, _linears(kv=80)), "multiple of 32"),
    (("w8a8", None, {**SMOL, "quantization_config": {"quant_method": "gptq"}}, _linears()), "already quantized (gptq)"),
])
def test_bad_requests_are_one_line_errors(args, expect):
    with pytest.raises(QuantizationError, match=expect.replace("(", r"\(").replace(")", r"\)")) as exc:
        resolve_quant(*args)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["w8a8", "w4a16"])
def test_row_blocks_change_nothing(name, monkeypatch):
    """The search runs a block of rows at a time (memory); any block size gives the same scales and weights."""
    from prunenet.quantization import numerics

    g = torch.Generator().manual_seed(3)
    w = torch.randn(301, 128, generator=g) * torch.rand(301, 1, generator=g)
    group = 32 if SCHEMES[name].grouped else None
    whole = compute_scales(w, SCHEMES[name], group), fake_quantize(w, SCHEMES[name], group)
    monkeypatch.setattr(numerics, "ROW_BLOCK", 7)  # 301 rows: 43 blocks, the last one short
    blocked = compute_scales(w, SCHEMES[name], group), fake_quantize(w, SCHEMES[name], group)
    assert torch.equal(whole[0], blocked[0]) and torch.equal(whole[1], blocked[1])
    in_place = w.clone()
    numerics.fake_quantize_(in_place, SCHEMES[name], group)
    assert torch.equal(in_place, whole[1])
