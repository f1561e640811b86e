"Latent K/V cache (hypercompress.kv) on tiny models: exactness at full rank, measured cache size, bounded cache."
import copy

import pytest
import torch

from hypercompress.branches import CompressionState, TensorProposal, registry, run_branches
from hypercompress.config import load_config
from hypercompress.kv import apply_kv_latent, check_latent_kv_support, generate_cache_report, kv_cache_bytes, kv_projections
from hypercompress.layers import LatentKVAttention
from hypercompress.models import build_tiny_model, count_parameters


def svd_proposals(model, rank):
    "k/v proposals from a plain SVD computed here, independent of the lra module."
    proposals = []
    for block in kv_projections(model):
        for role in ("k", "v"):
            name, module = block[role]
            U, S, Vh = torch.linalg.svd(module.weight.detach().double(), full_matrices=False)
            proposals.append(TensorProposal(name, "low_rank", {"U": (U[:, :rank] * S[:rank]).float(), "V": Vh[:rank].float()},
                                            rank=rank, metadata=dict(kv_latent=True, attention=block["attention"], role=role)))
    return proposals


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model("tiny-llama")


def latent(model, rank, **kwargs):
    copied = copy.deepcopy(model)
    return copied, apply_kv_latent(copied, svd_proposals(copied, rank), **kwargs)


def test_full_rank_matches_original(tiny):
    model, _ = tiny
    full, report = latent(model, 32)  # h_kv·d = 2·16
    assert all(isinstance(model.get_submodule(n), torch.nn.Module) for n in report["attention_modules"])
    assert isinstance(full.model.layers[1].self_attn, LatentKVAttention)
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(full(ids).logits, model(ids).logits, atol=1e-4, rtol=0)
        a, b = model(ids[:, :12], use_cache=True), full(ids[:, :12], use_cache=True)
        assert b.cache.layers[0].keys.shape == (2, 1, 12, 32)
        torch.testing.assert_close(full(ids[:, 12:], cache=b.cache).logits, model(ids[:, 12:], cache=a.cache).logits,
                                   atol=1e-4, rtol=0)
    prompt = ids[:1, :5]
    assert torch.equal(full.generate(prompt, max_new_tokens=24, do_sample=False),
                       model.generate(prompt, max_new_tokens=24, do_sample=False))


def test_cache_bytes_and_parameters(tiny):
    model, _ = tiny
    small, report = latent(model, 8)
    assert report["params_removed"] == count_parameters(model) - count_parameters(small) == 4 * (64 * 32 - 8 * 96)
    prompt = torch.arange(6)[None]
    before, after = generate_cache_report(model, prompt, 10), generate_cache_report(small, prompt, 10)
    assert before["bytes_per_token"] == 2 * 2 * 32 * 4 and after["bytes_per_token"] == 2 * 2 * 8 * 4
    assert kv_cache_bytes(((torch.zeros(2, 3), torch.zeros(2, 3)),)) == 48


def test_bounded_cache_never_exceeds_window(tiny):
    model, _ = tiny
    bounded, _ = latent(model, 16, cache_tokens=12, sink_tokens=4)
    result = generate_cache_report(bounded, torch.arange(5)[None], 40)
    assert result["sequences"].shape == (1, 45)  # generation goes on past the window
    assert result["max_cached_tokens"] == result["cached_tokens"] == 12


def test_unsupported_and_invalid(tiny):
    model, _ = tiny
    gpt2, _ = build_tiny_model("tiny-gpt2")
    with pytest.raises(NotImplementedError, match="GPT-2 is not supported"):
        check_latent_kv_support(gpt2, gpt2.transformer.h[0].attn)
    with pytest.raises(ValueError, match="needs both k and v"):
        apply_kv_latent(copy.deepcopy(model), svd_proposals(model, 8)[:1])
    with pytest.raises(ValueError, match="must exceed sink_tokens"):
        latent(model, 8, cache_tokens=4, sink_tokens=4)


def test_branch_counts_what_it_removes(tiny):
    pytest.importorskip("hypercompress.lra")
    model, tokenizer = tiny
    assert "kv" in registry
    config = load_config(None, overrides=["branches.kv.rank=8", "branches.kv.activation_matching_weight=0.3"])
    state = CompressionState(copy.deepcopy(model), tokenizer, config, verbose=False)
    artifact = run_branches(state, ["kv"])["kv"]
    assert len(artifact.proposals) == 4 and artifact.metadata["activation_matching_weight"] == 0.3
    apply_kv_latent(state.model, artifact.proposals)
    assert count_parameters(model) - count_parameters(state.model) == artifact.params_removed
