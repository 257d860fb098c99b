"""Seeded tiny random models of every supported family, built from configs (no hub)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

# head_dim 32 everywhere: vLLM's CPU attention kernels reject head_dim 16.
_COMMON = dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
               max_position_embeddings=256, tie_word_embeddings=False)

TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(_COMMON, intermediate_size=192, num_key_value_heads=1)),
    "mistral": ("MistralConfig", dict(_COMMON, intermediate_size=192, num_key_value_heads=1, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(_COMMON, intermediate_size=192, num_key_value_heads=1)),
    "qwen3": ("Qwen3Config", dict(_COMMON, intermediate_size=192, num_key_value_heads=1, head_dim=32)),
    "gemma3_text": ("Gemma3TextConfig", dict(_COMMON, intermediate_size=192, num_key_value_heads=1, head_dim=32)),
    "phi3": ("Phi3Config", dict(_COMMON, intermediate_size=192, num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "phi": ("PhiConfig", dict(_COMMON, intermediate_size=192, num_key_value_heads=2)),
    "opt": ("OPTConfig", dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
                              ffn_dim=192, word_embed_proj_dim=64, max_position_embeddings=256,
                              tie_word_embeddings=False)),
    "falcon": ("FalconConfig", dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
                                    ffn_hidden_size=192, new_decoder_architecture=False, multi_query=True,
                                    parallel_attn=True, bias=True, tie_word_embeddings=False)),
}


def tiny_config(model_type: str):
    cls_name, kwargs = TINY_CONFIGS[model_type]
    return getattr(transformers, cls_name)(**kwargs)


def make_tiny_model(model_type: str, path: Path, seed: int = 0) -> Path:
    """Save a seeded random ``model_type`` causal LM (fp32 safetensors) to ``path``."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(model_type), dtype=torch.float32)
    with torch.no_grad():  # random init leaves some norms/biases at exact constants; perturb everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.eval().save_pretrained(path)
    return path


SENTENCE = "The old library stood at the corner of two quiet streets, and the librarian unlocked its door at nine."


def with_tokenizer(model_dir: Path, dst: Path) -> Path:
    """A copy of ``model_dir`` with a small byte-level BPE tokenizer saved by transformers 5 (TokenizersBackend)."""
    import json
    import shutil

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    shutil.copytree(model_dir, dst)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([SENTENCE] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(dst)
    assert json.loads((dst / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    return dst
