"Low-rank (LRA) and embedding (BLT) branches on tiny models: the maths, the counts and the tie, outside the notebooks."
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hypercompress.blt import BLTBranch, apply_blt, factorize_embedding
from hypercompress.layers import FactorizedEmbedding, FactorizedTiedHead
from hypercompress.branches import CompressionState, registry, run_branches
from hypercompress.config import load_config
from hypercompress.lra import (LRABranch, collect_grams, load_dense_factors, low_rank_factors, propose_low_rank, randomized_svd,
                               reconstruction_error, truncated_svd, whitened_svd, whitening_factor)
from hypercompress.models import build_tiny_model, count_parameters, iter_linears, linear_shape, linear_weight


def test_truncated_svd_error_is_the_spectrum_tail():
    W = torch.randn(48, 32, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(W.double())
    for k in (1, 8, 31):
        tail = ((s[k:] ** 2).sum() / (s ** 2).sum()).sqrt().item()
        assert reconstruction_error(W, *truncated_svd(W, k)) == pytest.approx(tail, abs=1e-5)


def test_randomized_matches_exact_on_low_rank_plus_noise():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(400, 16, generator=g) @ torch.randn(16, 300, generator=g) + 0.01 * torch.randn(400, 300, generator=g)
    exact, randomized = reconstruction_error(W, *truncated_svd(W, 16)), reconstruction_error(W, *randomized_svd(W, 16))
    assert randomized == pytest.approx(exact, rel=0.01)


@pytest.mark.parametrize("seed", range(5))
def test_whitened_never_worse_on_outputs(seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(40, 24, generator=g)
    X = torch.randn(200, 24, generator=g) * torch.logspace(-2, 1, 24)
    H = (X.T @ X).double()
    for k in (2, 8, 16):
        plain = reconstruction_error(W, *truncated_svd(W, k), H)
        whitened = reconstruction_error(W, *whitened_svd(W, H, k), H)
        assert whitened <= plain + 1e-6


def test_rank_deficient_gram_is_shifted_and_finite():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(6, 16, generator=g, dtype=torch.float64)  # 6 tokens, 16 features
    S, shift = whitening_factor(X.T @ X)
    assert shift > 0 and torch.isfinite(S).all()
    U, V = low_rank_factors(torch.randn(20, 16, generator=g), 4, gram=X.T @ X)
    assert torch.isfinite(U @ V).all()


def test_conv1d_full_rank_factors_keep_gpt2_logits():
    model, tokenizer = build_tiny_model("tiny-gpt2")
    ids = torch.tensor([tokenizer.encode("hello world")])
    with torch.no_grad(): reference = model(ids).logits
    proposals = propose_low_rank(model, {name: min(linear_shape(m)) for name, m in iter_linears(model)})
    for p in proposals:  # factors are in (out, in) orientation even though Conv1D stores (in, out)
        fan_in, fan_out = p.metadata["in_features"], p.metadata["out_features"]
        assert p.tensors["U"].shape[0] == fan_out and p.tensors["V"].shape[1] == fan_in
    copy, _ = build_tiny_model("tiny-gpt2")
    with torch.no_grad(): assert torch.allclose(load_dense_factors(copy, proposals)(ids).logits, reference, atol=1e-4)


def test_lra_branch_counts_and_skips_kv():
    model, _ = build_tiny_model("tiny-llama")
    calibration = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    state = CompressionState(model=model, config=load_config(None, overrides=["branches.lra.rank=8"]),
                             calibration=calibration, verbose=False)
    artifact = run_branches(state, ["lra"])["lra"]
    assert not any(name.endswith(("k_proj", "v_proj")) for name in artifact.by_target())
    assert artifact.params_removed == 2 * (2 * (64 * 64 - 8 * 128) + 3 * (64 * 128 - 8 * 192))
    assert artifact.metrics["whitened"] == len(artifact.proposals) == 10
    modules, grams = dict(model.named_modules()), collect_grams(model, calibration, list(artifact.by_target()))
    for p in artifact.proposals:  # errors are measured on the calibration outputs, and beat plain SVD's there
        weight = linear_weight(modules[p.target])
        assert p.error == pytest.approx(reconstruction_error(weight, p.tensors["U"], p.tensors["V"], grams[p.target]), abs=1e-6)
        assert p.error <= reconstruction_error(weight, *truncated_svd(weight, 8), grams[p.target]) + 1e-6
    assert "lra" in registry and "blt" in registry
    assert registry.names().index("blt") < registry.names().index("lra")


def test_factorize_embedding_balanced():
    E = torch.randn(60, 12, generator=torch.Generator().manual_seed(3))
    A, B = factorize_embedding(E, 5)
    assert torch.allclose(A.T @ A, B @ B.T, atol=1e-4)
    assert torch.allclose(torch.matmul(*factorize_embedding(E, 12)), E, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_blt_full_rank_same_logits_and_exact_count(name):
    model, tokenizer = build_tiny_model(name)
    V, D = model.get_input_embeddings().weight.shape
    ids = torch.tensor([tokenizer.encode("To be, or not to be")])
    with torch.no_grad(): reference = model(ids).logits
    apply_blt(model, D, verbose=False)
    with torch.no_grad(): assert torch.allclose(model(ids).logits, reference, atol=1e-4)
    model, _ = build_tiny_model(name)
    before = count_parameters(model)
    apply_blt(model, 16, verbose=False)
    assert count_parameters(model) == V * 16 + 16 * D + (before - V * D)
    assert isinstance(model.get_input_embeddings(), FactorizedEmbedding)
    assert isinstance(model.get_output_embeddings(), FactorizedTiedHead)
    model.tie_weights()
    assert model.get_output_embeddings().embedding is model.get_input_embeddings()
    assert model.config.tie_word_embeddings
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 3)


def test_blt_save_pretrained_round_trip_keeps_the_tie():
    model, tokenizer = build_tiny_model("tiny-gpt2")
    apply_blt(model, 16, verbose=False)
    ids = torch.tensor([tokenizer.encode("hello")])
    with torch.no_grad(): reference = model(ids).logits
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        saved = load_file(Path(folder) / "model.safetensors")
    assert not any(k.startswith("lm_head") for k in saved)
    fresh, _ = build_tiny_model("tiny-gpt2", seed=1)
    apply_blt(fresh, 16, verbose=False)
    fresh.load_state_dict(saved, strict=False)
    assert fresh.lm_head.embedding is fresh.get_input_embeddings()
    with torch.no_grad(): assert torch.allclose(fresh(ids).logits, reference, atol=1e-6)


def test_blt_branch_latent_dim_precedence():
    model, _ = build_tiny_model("tiny-llama")
    config = load_config(None, overrides=["branches.blt.enabled=true", "branches.blt.latent_dim=12",
                                          "branches.blt.embedding_reduction=0.5"])
    state = CompressionState(model=model, config=config, verbose=False)
    before = count_parameters(model)
    artifact = run_branches(state, ["blt"])["blt"]
    assert artifact.metrics["latent_dim"] == 12 and artifact.metadata["latent_dim_source"] == "latent_dim"
    assert count_parameters(model) == before  # a proposer: the model is untouched
    apply_blt(model, 12, factors=(artifact.proposals[0].tensors["A"], artifact.proposals[0].tensors["B"]), verbose=False)
    assert artifact.params_removed == before - count_parameters(model)  # what structural factorization will remove
    # enabled by default, but with no latent dim from the config and no plan there is nothing to propose
    assert not BLTBranch().enabled(CompressionState(model=build_tiny_model("tiny-llama")[0], config=load_config()))
    assert LRABranch.order > BLTBranch.order
