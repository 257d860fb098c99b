"""NucleusFilter keeps exactly the tokens transformers' TopPLogitsWarper keeps, sorted or not."""

from __future__ import annotations

import pytest
import torch
from transformers import TopPLogitsWarper

from prunenet.nucleus import NucleusFilter


def _scores(seed: int) -> torch.Tensor:
    """Rows from peaked to flat (the flat ones need more than k tokens: the fallback path), some masked."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(1.3, -2, 24).unsqueeze(1)
    scores = torch.randn(24, 5000, generator=g) * scale
    scores[3, :10] = -float("inf")  # e.g. end-of-text suppressed before the minimum length
    return scores


def _spy_on_the_fallback(monkeypatch) -> list[torch.Tensor]:
    """Record the rows each call hands to the sorted fallback (``_sorted_mask``); the rest come from the top k."""
    rows: list[torch.Tensor] = []
    fallback = NucleusFilter._sorted_mask

    def spy(self, scores):
        rows.append(scores.clone())
        return fallback(self, scores)

    monkeypatch.setattr(NucleusFilter, "_sorted_mask", spy)
    return rows


# rows of _scores(0) the fallback sorts: a nucleus of at least k tokens; None: some but not all (both paths)
FALLBACK_ROWS = {1: 24, 64: None, 1024: None, 10000: 0}


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 0.999])
@pytest.mark.parametrize("k", sorted(FALLBACK_ROWS))
def test_same_kept_tokens_and_scores_as_transformers(top_p: float, k: int, monkeypatch) -> None:
    scores = _scores(0)
    sorted_rows = _spy_on_the_fallback(monkeypatch)
    ours = NucleusFilter(top_p, k=k)(None, scores.clone())
    theirs = TopPLogitsWarper(top_p)(None, scores.clone())
    assert torch.equal(ours, theirs)
    # exactly the rows whose nucleus reaches the k-th token are sorted, the others are decided by the top k
    wide = torch.isfinite(theirs).sum(dim=1) >= min(k, scores.shape[1])
    fallback = torch.cat(sorted_rows) if sorted_rows else scores[:0]
    assert len(sorted_rows) <= 1 and torch.equal(fallback, scores[wide])
    if FALLBACK_ROWS[k] is None:
        assert 0 < len(fallback) < len(scores)  # both the top-k path and the fallback decided some rows
    else:
        assert len(fallback) == FALLBACK_ROWS[k]


def test_a_seeded_draw_picks_the_same_tokens() -> None:
    scores = _scores(1)
    draws = []
    for warp in (NucleusFilter(0.95), TopPLogitsWarper(0.95)):
        torch.manual_seed(0)
        draws.append(torch.multinomial(warp(None, scores.clone()).softmax(-1), 1))
    assert torch.equal(*draws)


def test_top_p_one_keeps_everything_and_bad_settings_are_refused() -> None:
    scores = _scores(2)
    assert torch.equal(NucleusFilter(1.0)(None, scores), scores)
    with pytest.raises(ValueError):
        NucleusFilter(0.0)
    with pytest.raises(ValueError):
        NucleusFilter(0.9, k=0)


def test_generate_with_the_filter_samples_what_transformers_samples(tiny_models, monkeypatch) -> None:
    """In ``generate`` (after min-new-tokens, at the warper's place) the seeded samples are unchanged."""
    from transformers import LogitsProcessorList

    from prunenet.source.loaders import load_causal_lm

    model = load_causal_lm(tiny_models["llama"])
    ids = torch.randint(0, model.config.vocab_size, (6, 5), generator=torch.Generator().manual_seed(0))
    common = {"do_sample": True, "top_k": 0, "max_new_tokens": 24, "min_new_tokens": 24,
              "pad_token_id": 0, "attention_mask": torch.ones_like(ids)}
    sorted_rows = _spy_on_the_fallback(monkeypatch)
    out, sorted_per_k = [], []
    for k in (None, 64, 1024):  # transformers' warper; the filter at two k (the tiny model's vocabulary is 512)
        extra = {"top_p": 0.95} if k is None else {
            "top_p": 1.0, "logits_processor": LogitsProcessorList([NucleusFilter(0.95, k=k)])}
        torch.manual_seed(0)
        with torch.no_grad():
            out.append(model.generate(input_ids=ids, **common, **extra))
        sorted_per_k.append(sum(len(r) for r in sorted_rows))
        sorted_rows.clear()
    assert out[0].shape == (6, 29) and torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    # k=64: the nucleus is wider than 64 tokens, every row of every step is sorted; k=1024: no row is
    assert sorted_per_k == [0, 6 * 24, 0]
