"Sparsity: masks, OWL ratios, Bregman refinement, mask persistence under training and saving, and the branch."
import io

import pytest
import torch

from hypercompress.branches import CompressionState, input_column_norms, registry, run_branches
from hypercompress.config import load_config
from hypercompress.models import build_tiny_model, count_nonzero, iter_linears, linear_weight
from hypercompress.sparsity import (MASK_BUFFER, SparsityBranch, apply_masks, bregman_refine, magnitude_mask, nm_mask,
                                    owl_layer_sparsities, parse_n_m, relative_error, remove_masks, row_errors,
                                    wanda_mask, wanda_score)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_out_of_range_is_refused(sparsity):
    W = torch.randn(4, 8)
    for make in (lambda: magnitude_mask(W, sparsity), lambda: wanda_mask(W, torch.ones(8), sparsity),
                 lambda: owl_layer_sparsities([0.1, 0.2], sparsity)):
        with pytest.raises(ValueError, match="sparsity"): make()


@pytest.mark.parametrize("pattern", ["2-4", "4:2", "0:4", "", "2:4:8"])
def test_bad_n_m_is_refused(pattern):
    with pytest.raises(ValueError, match="N:M"): parse_n_m(pattern)


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.77])
def test_masks_remove_exactly_floor_s_n(sparsity):
    W = torch.randn(24, 40)
    expected = int(sparsity * W.numel() + 1e-9)
    assert int((~magnitude_mask(W, sparsity)).sum()) == expected
    mask = wanda_mask(W, torch.rand(40) + 0.1, sparsity)
    assert int((~mask).sum()) == expected
    assert (mask.sum(dim=1).max() - mask.sum(dim=1).min()) <= 1


def test_wanda_compares_per_output_row():
    W = torch.tensor([[1., 2., 3., 4.], [10., 20., 30., 40.]])
    assert torch.equal(wanda_mask(W, torch.ones(4), 0.5), torch.tensor([[False, False, True, True]] * 2))
    assert torch.allclose(wanda_score(W, torch.tensor([1., 1., 1., 10.]))[0], torch.tensor([1., 2., 3., 40.]))


def test_nm_keeps_n_of_every_m():
    mask = nm_mask(torch.rand(8, 32), 2, 4)
    assert torch.equal(mask.reshape(8, 8, 4).sum(-1), torch.full((8, 8), 2))


def test_owl_mean_is_target_and_outliers_get_less_sparsity():
    g = torch.Generator().manual_seed(0)
    ratios = torch.rand(30, generator=g).tolist()
    for target in (0.3, 0.5, 0.7):
        sparsities = owl_layer_sparsities(ratios, target, lam=0.08)
        assert abs(sum(sparsities) / len(sparsities) - target) < 1e-12
        assert sparsities[ratios.index(max(ratios))] == min(sparsities)
        assert abs(max(sparsities) - min(sparsities) - 0.16) < 1e-12


def _correlated(seed, out_features=16, in_features=32):
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(512, 4, generator=g, dtype=torch.float64)
    X = 0.3 * torch.randn(512, in_features, generator=g, dtype=torch.float64) + factors.repeat(1, in_features // 4)
    X = X * (0.2 + 3 * torch.rand(in_features, generator=g, dtype=torch.float64))
    return torch.randn(out_features, in_features, generator=g), X.T @ X


@pytest.mark.parametrize("seed", range(4))
def test_bregman_never_increases_the_calibration_error(seed):
    W, H = _correlated(seed)
    for start in (wanda_mask(W, input_column_norms({"H": H}), 0.6), magnitude_mask(W, 0.4)):
        refined = bregman_refine(W, H, start, iterations=30)
        assert (row_errors(W, H, refined) <= row_errors(W, H, start)).all()
        assert torch.equal(refined.sum(dim=1), start.sum(dim=1))


def test_bregman_prunes_cancelling_weights_that_wanda_keeps():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(256, 2, generator=g, dtype=torch.float64)
    X = base.repeat_interleave(2, dim=1) + 0.01 * torch.randn(256, 4, generator=g, dtype=torch.float64)
    H = X.T @ X
    W = torch.tensor([[1.0, -1.0, 0.8, 0.8]])
    start = wanda_mask(W, input_column_norms({"H": H}), 0.5)
    refined = bregman_refine(W, H, start, iterations=50)
    assert torch.equal(refined, torch.tensor([[False, False, True, True]]))
    assert relative_error(W, refined, H) < 0.1 * relative_error(W, start, H)


def _adamw_steps(model, steps=3):
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        ids = torch.randint(0, 256, (2, 16))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("tiny", ["tiny-llama", "tiny-gpt2"])
def test_masked_weights_stay_zero_through_training_and_saving(tiny):
    model, _ = build_tiny_model(tiny)
    masks = {name: magnitude_mask(linear_weight(module).detach(), 0.5) for name, module in iter_linears(model)}
    apply_masks(model, masks)
    _adamw_steps(model)
    modules = dict(model.named_modules())
    for name, mask in masks.items(): assert linear_weight(modules[name])[~mask].abs().max().item() == 0.0
    assert not any(MASK_BUFFER in key for key in model.state_dict())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh, _ = build_tiny_model(tiny)
    fresh.load_state_dict(torch.load(buffer))
    fresh_modules = dict(fresh.named_modules())
    for name, mask in masks.items(): assert linear_weight(fresh_modules[name])[~mask].abs().max().item() == 0.0
    assert remove_masks(model) == len(masks)
    assert remove_masks(model) == 0
    assert not any(hasattr(m, MASK_BUFFER) for m in model.modules())


def test_branch_is_registered_and_removes_what_it_reports():
    assert "sparsity" in registry and SparsityBranch.order == 30
    model, tokenizer = build_tiny_model("tiny-llama")
    config = load_config(None, overrides=["branches.sparsity.target_sparsity=0.5", "branches.sparsity.method=wanda"])
    calibration = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    state = CompressionState(model=model, tokenizer=tokenizer, config=config, calibration=calibration, verbose=False)
    artifact = run_branches(state, ["sparsity"])["sparsity"]
    assert {p.target for p in artifact.proposals} == {name for name, _ in iter_linears(model)}
    assert all(p.kind == "mask" and p.tensors["mask"].dtype == torch.bool for p in artifact.proposals)
    before = count_nonzero(model)
    apply_masks(model, {p.target: p.tensors["mask"] for p in artifact.proposals})
    assert before - count_nonzero(model) == artifact.params_removed == artifact.metrics["nonzeros_removed"]
    assert all(0 < error < 1 for error in artifact.metrics["relative_error"].values())
