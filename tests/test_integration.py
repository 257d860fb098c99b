"""The main job on the real default model (the README's command, default settings): prune, export, reload."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def exported(quickstart):
    """The README's ``prunenet-export --ratio 0.3 --target vllm --out out``, run as written."""
    _, out, result = quickstart
    return out, result


def test_default_model_prunes_nonuniformly_within_budget(exported):
    out, result = exported
    assert result["source"] == "SmolLM2-135M-Instruct"
    widths = result["widths"]
    assert len(widths) == 30 and len(set(widths)) > 1 and all(w % 64 == 0 for w in widths)
    assert abs(sum(widths) - 0.7 * 30 * 1536) <= 64
    stats = result["stats"]
    assert stats["params_before"] == 134_515_008 and 0.15 < stats["param_reduction"] < 0.21
    assert result["export"]["max_logit_diff"] < 1e-3


def test_quality_report_is_sane_and_better_than_random(exported, default_model):
    _, result = exported
    q = result["quality"]
    assert q["dense_ppl"] < q["pruned_ppl"] < 4 * q["dense_ppl"]
    assert 0 < q["kl"] < 1.5 and q["top1_agreement"] > 0.35
    from prunenet.texts import GENRES

    genres = q["genres"]  # every bundled genre is scored; the headline is the first one's report
    assert list(genres) == list(GENRES) and genres["fiction"]["kl"] == q["kl"]
    tech = genres["technical"]
    assert tech["n_tokens"] > 1000 and tech["dense_ppl"] < tech["pruned_ppl"] and 0 < tech["kl"] < 2
    assert tech["dense_ppl"] != q["dense_ppl"]
    from prunenet.evaluation.reference import DenseReference
    from prunenet.evaluation.windows import token_windows
    from prunenet.planning.planner import PruneConfig, make_plan
    from prunenet.source.loaders import load_causal_lm, load_tokenizer
    from prunenet.texts import reference_text

    model, tok = load_causal_lm(default_model), load_tokenizer(default_model)
    ref = DenseReference(model, token_windows(tok, reference_text(), seq_len=512))
    random_plan = make_plan(default_model, PruneConfig(ratio=0.3, method="random", self_data=0)).plan
    assert ref.compare_plan(random_plan).kl > 2 * q["kl"]


def test_export_reloads_and_still_speaks_english(exported, default_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = exported
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        full = model.generate(**ids, max_new_tokens=12, do_sample=False)[0]
    new = full[ids["input_ids"].shape[1]:]
    words = [w for w in tok.decode(new).split() if w.strip(".,;:!?\"'").isalpha()]
    assert len(words) >= 4, tok.decode(new)
    # English the dense model finds plausible: its mean NLL of the pruned continuation (random tokens: ~11 nats)
    dense = AutoModelForCausalLM.from_pretrained(default_model).eval()
    with torch.no_grad():
        logp = torch.log_softmax(dense(full[None]).logits[0, :-1].float(), -1)
    nll = -logp[torch.arange(len(full) - 1), full[1:]][-len(new):].mean().item()
    assert nll < 4.0, (nll, tok.decode(new))
    card = (out / "README.md").read_text()
    assert "perplexity" in card and (out / "prunenet-widths.png").stat().st_size > 1000
