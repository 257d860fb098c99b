"""The PruneNet engine: spectra, policy, training, allocation, selection and surgery."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_CONFIGS
from transformers import AutoModelForCausalLM

from prunenet.errors import BudgetError, PolicyMismatch, PruneNetError
from prunenet.planning.allocation import input_layer_prior, sensitivity_widths, uniform_widths, width_step
from prunenet.planning.plan import PruningPlan
from prunenet.planning.planner import PruneConfig, make_plan
from prunenet.planning.surgery import apply_plan_
from prunenet.policy.network import PolicyNetwork, load_policy, policy_fingerprint, save_policy
from prunenet.policy.spectrum import ks_distance, singular_values


def _ks_bruteforce(a, b):
    a, b = sorted(a.tolist()), sorted(b.tolist())
    pts = a + b
    fa = lambda x: sum(v <= x for v in a) / len(a)  # noqa: E731
    fb = lambda x: sum(v <= x for v in b) / len(b)  # noqa: E731
    return max(abs(fa(x) - fb(x)) for x in pts)


def test_ks_identical_spectra_is_zero():
    s = singular_values(torch.randn(50, 20))
    assert float(ks_distance(s, s.clone())) == 0.0


def test_ks_matches_definition():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(37, generator=g), torch.randn(23, generator=g) + 0.3
    assert float(ks_distance(a, b)) == pytest.approx(_ks_bruteforce(a, b), abs=1e-12)


@pytest.mark.parametrize("shape", [(64, 16), (16, 64)])
def test_singular_values_match_svd(shape):
    W = torch.randn(*shape, dtype=torch.float64).float()
    assert torch.allclose(singular_values(W), torch.linalg.svdvals(W), atol=1e-4)


@pytest.mark.parametrize("k", [200, 300, 420, 511])
def test_spectral_reward_complement_gram_equals_direct(k):
    """Keeping most rows, the reward subtracts the dropped rows' Gram; the KS value must not change."""
    from prunenet.policy.rewards import SpectralReward
    from prunenet.source.ffn import LayerFFN

    g = torch.Generator().manual_seed(k)
    W = torch.randn(512, 96, generator=g) * torch.rand(512, 1, generator=g)
    reward = SpectralReward(LayerFFN(W=W, D=W, gain=torch.ones(96), act="silu"))
    for _ in range(3):
        kept = torch.randperm(512, generator=g)[:k]
        direct = float(ks_distance(reward.sigma_ref, singular_values(W[kept])))
        assert reward.cost(kept) == pytest.approx(direct, abs=1.5 / 96)  # at most one value crosses a step


def test_fast_policy_score_equals_paper_formula():
    torch.manual_seed(0)
    policy = PolicyNetwork(24, 96)
    S = torch.randn(96, 24)
    A, b, rho = policy.proj.weight.detach(), policy.proj.bias.detach(), policy.rho.detach()
    paper = ((S @ A.T + b) @ rho).squeeze(-1)  # alpha = sigmoid((S A^T + 1 b^T) rho), paper section 3
    assert torch.allclose(policy.keep_logits(S), paper, atol=1e-4)
    assert torch.allclose(policy.paper_keep_logits(S), paper, atol=1e-5)
    assert torch.allclose(policy(S), torch.sigmoid(paper), atol=1e-5)  # keep-probabilities of the 96 rows
    assert policy(S).std() > 0.1  # not a constant: the formula above has something to disagree with


def test_policy_roundtrip_and_corrupt_file(tmp_path):
    policy = PolicyNetwork(8, 32)
    fp = save_policy(policy, tmp_path / "p.safetensors", {"method": "prunenet"})
    loaded, meta = load_policy(tmp_path / "p.safetensors")
    assert meta["fingerprint"] == fp and meta["width"] == 32
    S = torch.randn(32, 8)
    assert torch.equal(loaded.keep_logits(S), policy.keep_logits(S))
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(PolicyMismatch):
        load_policy(tmp_path / "bad.safetensors")


def test_uniform_widths_and_steps():
    assert uniform_widths([1536] * 3, 0.3, 64) == [1088, 1088, 1088]
    assert uniform_widths([192], 0.0, 1) == [192]
    assert width_step(64, (3,)) == 192
    with pytest.raises(BudgetError):
        uniform_widths([192], 0.3, 256)
    with pytest.raises(BudgetError):
        width_step(0)


def test_sensitivity_budget_within_one_step_and_fragile_layers_keep_more():
    full = [1536] * 6
    fragile = {0, 5}

    def curve(layer, widths):  # cost of keeping k: fragile layers hurt 10x more
        return [(10.0 if layer in fragile else 1.0) * (1 - w / 1536) for w in widths]

    widths = sensitivity_widths(full, 0.3, 64, curve)
    assert all(w % 64 == 0 and w >= 64 for w in widths)
    assert abs(sum(widths) - 0.7 * sum(full)) <= 64
    assert min(widths[0], widths[5]) > max(widths[1:5])


@pytest.mark.parametrize("layers", [1, 2, 12, 30])
def test_input_layer_prior_protects_the_first_layers_and_still_meets_the_budget(layers):
    full = [512] * layers
    prior = input_layer_prior(layers)
    first = sum(w > 1 for w in prior)
    assert first == -(-layers // 10) and prior[:first] == [max(prior)] * first

    def curve(layer, widths):  # equal relative costs everywhere: only the prior tells layers apart
        return [prior[layer] * (1 - w / 512) for w in widths]

    widths = sensitivity_widths(full, 0.3, 16, curve)
    assert abs(sum(widths) - 0.7 * sum(full)) <= 16
    if layers >= 10:  # the input layers are the last to give up neurons (when the others can cover the budget)
        assert widths[:first] == full[:first] and min(widths[first:]) < 512


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_pruned_ffn_equals_masked_dense(tiny_models, model_type):
    """Slicing out neurons == zeroing their output columns in the dense model."""
    from prunenet.arch import get_arch_spec

    src = tiny_models[model_type]
    plan = make_plan(src, PruneConfig(self_data=0, ratio=0.4, method="magnitude", align=1)).plan
    spec = get_arch_spec(model_type)
    dense = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    masked = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        for i, lp in enumerate(plan.layers):
            drop = sorted(set(range(lp.original_width)) - set(lp.kept))
            out = masked.get_parameter(spec.layer_name(i, spec.out_proj))
            out[:, drop] = 0
    pruned = apply_plan_(dense, plan)
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(pruned(ids).logits, masked(ids).logits, atol=1e-5)
    assert plan.widths != plan.original_widths


@pytest.mark.parametrize("method", ["prunenet", "prunenet-ks", "prunenet-paper", "random", "magnitude"])
@pytest.mark.parametrize("allocation", ["sensitivity", "uniform"])
def test_plan_is_deterministic_and_meets_budget(tiny_models, method, allocation):
    cfg = PruneConfig(self_data=0, ratio=0.3, method=method, allocation=allocation, align=16, episodes=3, seed=7)
    a = make_plan(tiny_models["llama"], cfg).plan
    b = make_plan(tiny_models["llama"], cfg).plan
    assert a.to_json() == b.to_json()
    assert all(w % 16 == 0 and w >= 16 for w in a.widths)
    assert abs(sum(a.widths) - 0.7 * sum(a.original_widths)) <= 16 * (1 if allocation == "sensitivity" else 3)
    assert PruningPlan.from_json(a.to_json()).to_json() == a.to_json()


def test_ratio_zero_keeps_everything(tiny_models):
    plan = make_plan(tiny_models["llama"], PruneConfig(self_data=0, ratio=0.0)).plan
    assert plan.is_identity and plan.removed_fraction == 0.0


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_every_architecture_trains_and_prunes(tiny_models, model_type):
    result = make_plan(tiny_models[model_type], PruneConfig(self_data=0, ratio=0.5, align=32, episodes=2))
    assert result.policy is not None and result.policy_metadata["train"]["episodes"] == 2
    assert result.policy_metadata["fingerprint"] == policy_fingerprint(result.policy)
    widths = result.plan.widths  # ratio 0.5 of 3 x 192 neurons in steps of 32: the budget is met exactly
    assert sum(widths) == 3 * 96 and all(w % 32 == 0 and 32 <= w <= 192 for w in widths), widths


def test_policy_reuse_at_other_ratio_and_shape_check(tiny_models, tmp_path):
    trained = make_plan(tiny_models["llama"], PruneConfig(self_data=0, ratio=0.3, align=1, episodes=3))
    path = tmp_path / "policy.safetensors"
    save_policy(trained.policy, path, trained.policy_metadata)
    reused = make_plan(tiny_models["llama"], PruneConfig(self_data=0, ratio=0.3, align=1, policy=path)).plan
    assert reused.layers == trained.plan.layers  # same policy, same ratio: same plan
    wider = make_plan(tiny_models["llama"], PruneConfig(self_data=0, ratio=0.1, align=1, policy=path)).plan
    assert sum(wider.widths) > sum(trained.plan.widths)
    for narrow, wide in zip(trained.plan.layers, wider.layers, strict=True):
        assert narrow.scores == wide.scores  # the saved policy scores every neuron as the trained one did
        top = sorted(range(wide.original_width), key=lambda j: -wide.scores[j])
        # each ratio keeps its layer's best-scored neurons, so the plan that keeps fewer keeps a subset
        assert set(top[: narrow.width]) == set(narrow.kept) and set(top[: wide.width]) == set(wide.kept)
    bad = PolicyNetwork(5, 77)  # a state width and an FFN width no layer of the tiny llama has
    save_policy(bad, tmp_path / "bad.safetensors", {"method": "prunenet"})
    with pytest.raises(PolicyMismatch, match="77 x state 5"):
        make_plan(tiny_models["llama"], PruneConfig(self_data=0, ratio=0.3, policy=tmp_path / "bad.safetensors"))


@pytest.mark.parametrize("kwargs", [dict(ratio=1.0), dict(ratio=-0.1), dict(ratio=0.3, episodes=0),
                                    dict(ratio=0.3, method="nope"), dict(ratio=0.3, allocation="nope"),
                                    dict(ratio=0.3, align=0)])
def test_bad_config_is_a_clear_error(kwargs):
    with pytest.raises(PruneNetError):
        PruneConfig(**kwargs)
