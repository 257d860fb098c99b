"""Random-weight Hugging Face LLaMA checkpoints of real shapes, written shard by shard.

Why a separate module: the scale benchmark (``scale_benchmark.py``) needs checkpoints of real 7B/8B/70B
shapes at any depth, and nothing else in the project makes them. Building one is its own concern (tensor
lists, a streaming safetensors writer, a tokenizer and config that load in transformers 4.x and 5.x), so
it lives here, importable by the benchmark and the tests and runnable on its own.

The checkpoint has one safetensors shard per decoder layer plus one for the embeddings, final norm and LM
head; host memory stays bounded by one chunk of one tensor. Values are drawn from a generator seeded by
(seed, tensor name), so the same seed gives the same bytes. ``scale-benchmark.json`` is written last and
marks a finished build (``checkpoint_ok``).

Example:
    python examples/scale_checkpoints.py --shape llama2-7b --layers 8 --out ckpt/llama2-7b-8
    python examples/scale_checkpoints.py --shape llama3-70b --layers 2 --out ckpt/llama3-70b-2 --device cuda
    python examples/scale_benchmark.py build --shape tiny --layers 2 --out /tmp/tiny   # the same builder
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# --------------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    """The architecture numbers of one LLaMA-family model (everything but the depth)."""

    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES: dict[str, Shape] = {
    "llama2-7b": Shape(hidden=4096, ffn=11008, heads=32, kv_heads=32, vocab=32000),
    "llama3-8b": Shape(hidden=4096, ffn=14336, heads=32, kv_heads=8, vocab=128256, rope_theta=500000.0),
    "llama3-70b": Shape(hidden=8192, ffn=28672, heads=64, kv_heads=8, vocab=128256, rope_theta=500000.0),
    # For tests: head_dim 64 (vLLM-CPU's attention kernels reject 16), FFN 688 as in the 7B's ratio.
    "tiny": Shape(hidden=256, ffn=688, heads=4, kv_heads=4, vocab=1000),
}

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# safetensors' dtype names.
_ST_DTYPE = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
BOS_ID, EOS_ID, UNK_ID = 1, 2, 0
INIT_STD = 0.02  # the LLaMA initializer range: keeps activations sane through 80 random layers
CHUNK_BYTES = 256 << 20  # generate big tensors in row chunks of about this size


def layer_tensors(shape: Shape, i: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) of decoder layer ``i``; init is "normal" or "ones"."""
    h, f, kv = shape.hidden, shape.ffn, shape.kv_heads * shape.head_dim
    p = f"model.layers.{i}."
    return [
        (p + "input_layernorm.weight", (h,), "ones"),
        (p + "self_attn.q_proj.weight", (h, h), "normal"),
        (p + "self_attn.k_proj.weight", (kv, h), "normal"),
        (p + "self_attn.v_proj.weight", (kv, h), "normal"),
        (p + "self_attn.o_proj.weight", (h, h), "normal"),
        (p + "post_attention_layernorm.weight", (h,), "ones"),
        (p + "mlp.gate_proj.weight", (f, h), "normal"),
        (p + "mlp.up_proj.weight", (f, h), "normal"),
        (p + "mlp.down_proj.weight", (h, f), "normal"),
    ]


def outer_tensors(shape: Shape) -> list[tuple[str, tuple[int, ...], str]]:
    """Embeddings, final norm and (untied) LM head."""
    return [
        ("model.embed_tokens.weight", (shape.vocab, shape.hidden), "normal"),
        ("model.norm.weight", (shape.hidden,), "ones"),
        ("lm_head.weight", (shape.vocab, shape.hidden), "normal"),
    ]


# ---------------------------------------------------------------------------------------------- build


def _tensor_chunks(name: str, dims: tuple[int, ...], init: str, dtype: torch.dtype, seed: int,
                   device: str) -> Iterator[torch.Tensor]:
    """The tensor's values as CPU row chunks, from a generator seeded by (seed, name): reproducible."""
    if init == "ones":
        yield torch.ones(dims, dtype=dtype)
        return
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    row_bytes = math.prod(dims[1:]) * torch.empty((), dtype=dtype).element_size()
    step = max(1, CHUNK_BYTES // row_bytes)
    for start in range(0, dims[0], step):
        rows = min(step, dims[0] - start)
        chunk = torch.empty((rows, *dims[1:]), device=device, dtype=dtype).normal_(0.0, INIT_STD, generator=gen)
        yield chunk.cpu()


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...], str]], dtype: torch.dtype,
                      seed: int, device: str) -> int:
    """Stream a safetensors file: the header first (sizes are known), then each tensor chunk by chunk.

    safetensors' own ``save_file`` needs every tensor of the shard in memory at once (2 x 2.1 GB for a
    Llama-3-70B embedding shard); the format is an 8-byte header length, a JSON header and raw
    little-endian bytes, so writing it directly keeps one chunk resident. Returns the data bytes.
    """
    item = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims, _ in tensors:
        nbytes = math.prod(dims) * item
        header[name] = {"dtype": _ST_DTYPE[dtype], "shape": list(dims), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, dims, init in tensors:
            for chunk in _tensor_chunks(name, dims, init, dtype, seed, device):
                # view as bytes: numpy has no bfloat16, the raw little-endian bytes are what the format wants
                fh.write(memoryview(chunk.contiguous().view(torch.uint8).numpy()))
    tmp.replace(path)
    return offset


def write_tokenizer(vocab_size: int, out: Path) -> None:
    """A word-level tokenizer with exactly ``vocab_size`` entries: <unk>, <s>, </s>, t3 .. t{V-1}.

    Every generated id decodes to a word ("t123") that re-encodes to the same id, so self-generated
    text survives the decode/encode round trip. Encoding adds <s> first, as LLaMA's tokenizer does.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": UNK_ID, "<s>": BOS_ID, "</s>": EOS_ID}
    vocab.update({f"t{i}": i for i in range(3, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # WordPiece's decoder with an unused prefix joins tokens with single spaces (the WhitespaceSplit inverse).
    tok.decoder = decoders.WordPiece(prefix="\u2581\u2581", cleanup=False)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", BOS_ID)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=4096, clean_up_tokenization_spaces=False)
    fast.save_pretrained(out)
    # transformers 5 writes its own class name, which 4.x cannot load; the portable spelling loads in both.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def write_config(shape: Shape, layers: int, dtype_name: str, out: Path) -> None:
    from transformers import GenerationConfig, LlamaConfig

    cfg = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
                      num_hidden_layers=layers, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, max_position_embeddings=4096,
                      rms_norm_eps=shape.rms_eps, rope_theta=shape.rope_theta, tie_word_embeddings=False,
                      bos_token_id=BOS_ID, eos_token_id=EOS_ID, architectures=["LlamaForCausalLM"])
    data = cfg.to_diff_dict()  # what save_pretrained writes: the non-default fields
    data["torch_dtype"] = data["dtype"] = dtype_name  # both spellings: transformers 4.x and 5.x
    (out / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID).save_pretrained(out)


def build_checkpoint(shape_name: str, layers: int, out: Path, dtype_name: str = "bfloat16", seed: int = 0,
                     device: str = "cpu") -> Path:
    """Write a random-weight LLaMA checkpoint into ``out``, one shard per decoder layer (see module doc)."""
    if layers < 1:
        raise ValueError("--layers must be at least 1")
    shape, dtype = SHAPES[shape_name], DTYPES[dtype_name]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device (use --device cpu or auto)")
    out.mkdir(parents=True, exist_ok=True)
    n = layers + 1
    groups = [outer_tensors(shape)] + [layer_tensors(shape, i) for i in range(layers)]
    weight_map: dict[str, str] = {}
    total = 0
    for k, tensors in enumerate(groups):
        shard = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        total += write_safetensors(out / shard, tensors, dtype, seed, device)
        weight_map.update({name: shard for name, _, _ in tensors})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    write_config(shape, layers, dtype_name, out)
    write_tokenizer(shape.vocab, out)
    (out / "scale-benchmark.json").write_text(json.dumps(
        {"shape": shape_name, "layers": layers, "dtype": dtype_name, "seed": seed, "init_std": INIT_STD}) + "\n")
    return out


def checkpoint_ok(path: Path, shape_name: str, layers: int, dtype_name: str) -> bool:
    """True when ``path`` holds a finished build of exactly this shape/depth/dtype (written last)."""
    try:
        meta = json.loads((path / "scale-benchmark.json").read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("shape"), meta.get("layers"), meta.get("dtype")) == (shape_name, layers, dtype_name)


def checkpoint_shape(model: Path) -> str:
    """The builder's shape name, else the directory name (a checkpoint not built here)."""
    try:
        return str(json.loads((model / "scale-benchmark.json").read_text())["shape"])
    except (OSError, ValueError, KeyError):
        return model.name


def checkpoint_layers(model: Path) -> int | None:
    try:
        return int(json.loads((model / "config.json").read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError):
        return None


def cached_checkpoint(cache: Path, shape_name: str, layers: int, dtype_name: str = "bfloat16", seed: int = 0,
                      device: str = "auto", build: bool = True) -> Path:
    """``cache/{shape}-{layers}-{dtype}``, built first when it is missing or unfinished (if ``build``)."""
    path = cache / f"{shape_name}-{layers}-{dtype_name}"
    if checkpoint_ok(path, shape_name, layers, dtype_name):
        return path
    if not build:
        raise SystemExit(f"error: {path} is missing; add --build to write it")
    print(f"== building {path}", file=sys.stderr, flush=True)
    shutil.rmtree(path, ignore_errors=True)
    return build_checkpoint(shape_name, layers, path, dtype_name, seed, device)



# ------------------------------------------------------------------------------------------------- CLI


def add_build_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The builder's options (shared by this script and ``scale_benchmark.py build``)."""
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--layers", type=int, required=True, help="decoder layers (any count)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                   help="where the random numbers are drawn (cuda is several times faster)")
    return p


def cmd_build(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    build_checkpoint(args.shape, args.layers, args.out, args.dtype, args.seed, args.device)
    size = sum(p.stat().st_size for p in args.out.glob("*.safetensors")) / 1e9
    print(f"wrote {args.out}: {args.shape}, {args.layers} layers, {args.dtype}, {size:.2f} GB "
          f"in {time.monotonic() - t0:.1f} s")
    return 0


def parser() -> argparse.ArgumentParser:
    return add_build_arguments(argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Example:\n" + __doc__.split("Example:\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter))


def main(argv: Sequence[str] | None = None) -> int:
    return cmd_build(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
