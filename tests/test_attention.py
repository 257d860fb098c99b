"""grouped_attention: the same logits and samples as transformers' SDPA, without repeating the KV heads."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.integrations import sdpa_attention

from prunenet.attention import GROUPED_SDPA, grouped_attention

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]]


def _model(kv_heads: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=kv_heads,
                                      max_position_embeddings=128, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(config).eval()


def _left_padded() -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths batched with left padding: the case that passes a mask to attention."""
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    return ids, mask


def _sample(model) -> torch.Tensor:
    ids, mask = _left_padded()
    torch.manual_seed(0)
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=24,
                              min_new_tokens=24, pad_token_id=0)


def _repeat_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    repeat = sdpa_attention.repeat_kv

    def spy(hidden, n_rep):
        calls.append(n_rep)
        return repeat(hidden, n_rep)

    monkeypatch.setattr(sdpa_attention, "repeat_kv", spy)
    return calls


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_same_logits_and_samples_without_repeating_kv(kv_heads: int, monkeypatch) -> None:
    model = _model(kv_heads)
    calls = _repeat_calls(monkeypatch)
    ids, mask = _left_padded()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    sampled = _sample(model)
    assert calls  # transformers' SDPA repeats the KV heads when a mask is passed on a CPU
    calls.clear()
    with grouped_attention(model):
        assert model.config._attn_implementation == GROUPED_SDPA
        with torch.no_grad():
            grouped = model(input_ids=ids, attention_mask=mask).logits
        resampled = _sample(model)
    assert not calls
    # bit-identical, padded positions aside (they attend to nothing and are never read)
    assert torch.equal(grouped[mask.bool()], logits[mask.bool()])
    assert torch.equal(resampled, sampled)
    assert model.config._attn_implementation == "sdpa"


def test_the_model_gets_its_attention_back_after_an_error() -> None:
    model = _model()
    with pytest.raises(RuntimeError), grouped_attention(model):
        raise RuntimeError("stop")
    assert model.config._attn_implementation == "sdpa"


def test_other_attention_implementations_are_left_alone() -> None:
    model = _model()
    model.set_attn_implementation("eager")
    with grouped_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"
