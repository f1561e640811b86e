"Loading, structure and size accounting in `hypercompress.models`, on tiny models only (no network, seconds)."
import huggingface_hub.constants
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, Phi3Config, PhiConfig
from transformers.pytorch_utils import Conv1D

from hypercompress.models import (
    ModelLoadError, baseline_analysis, build_tiny_model, byte_tokenizer, count_nonzero, count_parameters,
    effective_rank, format_count, iter_linears, linear_shape, linear_weight, load_model, model_structure,
    parameter_bytes, plot_spectra, size_breakdown,
)

SMALL = dict(vocab_size=258, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, max_position_embeddings=1024, bos_token_id=256, eos_token_id=257, pad_token_id=257)


def from_config(config):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def models():
    return {"llama": build_tiny_model("tiny-llama")[0], "gpt2": build_tiny_model("tiny-gpt2")[0],
            "phi": from_config(PhiConfig(**SMALL)), "phi3": from_config(Phi3Config(**SMALL))}


def role_names(parts):
    return {role: name.rsplit(".", 1)[-1] for role, (name, _) in parts.items()}


@pytest.mark.parametrize("text", ["plain ascii", " lead and  double spaces\n", "Grüße 日本語 🤗\t\x00", ""])
def test_byte_tokenizer_is_lossless(text):
    tokenizer = byte_tokenizer()
    ids = tokenizer.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert (len(tokenizer), tokenizer.bos_token, tokenizer.bos_token_id, tokenizer.eos_token_id) == (258, "<|bos|>", 256, 257)
    assert tokenizer.pad_token is not None


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_tiny_models_are_deterministic(name):
    first, tokenizer = build_tiny_model(name)
    state = torch.random.get_rng_state()
    second, _ = load_model(name)
    assert torch.equal(state, torch.random.get_rng_state())
    assert first.state_dict().keys() == second.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not second.training and second.config.vocab_size == len(tokenizer) == 258
    with torch.no_grad():
        assert second(torch.tensor([tokenizer.encode("hi")])).logits.shape == (1, 2, 258)


def test_load_model_dtype_and_save_pretrained(tmp_path):
    model, tokenizer = load_model("tiny-llama", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded, reloaded_tokenizer = load_model(str(tmp_path))
    assert reloaded.dtype == torch.float32
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight.float())
    assert reloaded_tokenizer.encode("héllo") == list("héllo".encode())


def test_unknown_hub_id_raises_helpful_error(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, never retry the network
    with pytest.raises(ModelLoadError) as error:
        load_model("no-such-org/no-such-model")
    message = str(error.value)
    assert "could not load 'no-such-org/no-such-model'" in message
    assert ".gguf" in message and "smollm2-135m" in message and "local" in message
    assert error.value.__cause__ is not None  # the original exception is chained, not lost
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("spec", ["/no/such/folder", "./missing-model", "missing.gguf"])
def test_missing_path_is_named(spec):
    with pytest.raises(ModelLoadError, match="no such file or directory") as error:
        load_model(spec)
    assert spec.lstrip("./") in str(error.value)


def test_structure_llama(models):
    structure = model_structure(models["llama"])
    layer = structure.layers[0]
    assert role_names(layer.attention) == dict(q="q_proj", k="k_proj", v="v_proj", o="o_proj")
    assert role_names(layer.mlp) == dict(gate="gate_proj", up="up_proj", down="down_proj")
    assert len(layer.norms) == 2 and structure.final_norm_name == "model.norm"
    assert (structure.embedding_name, structure.lm_head_name, structure.tied) == ("model.embed_tokens", "lm_head", True)
    assert (structure.hidden_size, structure.vocab_size, structure.n_heads, structure.n_kv_heads, structure.head_dim) == (
        64, 258, 4, 2, 16)
    assert [l.name for l in structure.layers] == ["model.layers.0", "model.layers.1"]


def test_structure_gpt2(models):
    structure = model_structure(models["gpt2"])
    layer = structure.layers[1]
    assert role_names(layer.attention) == dict(qkv="c_attn", o="c_proj")
    assert role_names(layer.mlp) == dict(up="c_fc", down="c_proj")
    assert isinstance(layer.attention["qkv"][1], Conv1D)
    assert (structure.tied, structure.final_norm_name, structure.head_dim) == (True, "transformer.ln_f", 16)


def test_structure_phi(models):
    structure = model_structure(models["phi"])
    layer = structure.layers[0]
    assert role_names(layer.attention) == dict(q="q_proj", k="k_proj", v="v_proj", o="dense")
    assert role_names(layer.mlp) == dict(up="fc1", down="fc2")
    assert (structure.tied, structure.final_norm_name) == (False, "model.final_layernorm")


def test_structure_phi3(models):
    structure = model_structure(models["phi3"])
    layer = structure.layers[0]
    assert role_names(layer.attention) == dict(o="o_proj", qkv="qkv_proj")
    assert role_names(layer.mlp) == dict(gate_up="gate_up_proj", down="down_proj")


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi", "phi3"])
def test_every_decoder_weight_has_a_role(models, name):
    model = models[name]
    structure = model_structure(model)
    assert set(structure.roles) == {n for n, _ in iter_linears(model)}
    assert "other" not in structure.roles.values()


def test_linear_helpers_transpose_conv1d():
    conv = Conv1D(6, 4)
    assert linear_shape(conv) == (4, 6) and linear_weight(conv).shape == (6, 4)
    x = torch.randn(2, 4)
    torch.testing.assert_close(x @ linear_weight(conv).T + conv.bias, conv(x))
    assert linear_shape(nn.Linear(4, 6)) == (4, 6)


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi", "phi3"])
def test_breakdown_sums_to_count(models, name):
    model = models[name]
    breakdown = size_breakdown(model)
    assert sum(breakdown.values()) == count_parameters(model)
    assert breakdown["attention"] > 0 and breakdown["kv"] > 0 and breakdown["mlp"] > 0
    assert (breakdown["head"] == 0) == model_structure(model).tied


def test_tied_embedding_counted_once(models):
    model = models["llama"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    naive = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert count_parameters(model) == naive - 258*64
    assert parameter_bytes(model) == 4*count_parameters(model)
    assert parameter_bytes(model, torch.float16) == 2*count_parameters(model)
    assert count_nonzero(model) <= count_parameters(model)
    assert size_breakdown(model)["embedding"] == 258*64


def test_format_count():
    assert [format_count(n) for n in (134_515_008, 49_728, 12)] == ["134.5M", "49.7K", "12"]


def test_effective_rank_on_known_spectrum():
    weight = torch.diag(torch.tensor([3., 2., 1., 0.]))
    assert effective_rank(weight, 0.9) == 2  # (9 + 4) / 14 = 0.93
    assert effective_rank(weight, 0.99) == 3
    assert effective_rank(weight, 1.0) == 3
    assert effective_rank(torch.zeros(4, 4)) == 0


def test_baseline_analysis_and_plot(models):
    analysis = baseline_analysis(models["llama"], max_layers=1, energies=(0.5, 0.9))
    assert [row["role"] for row in analysis] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert {row["layer"] for row in analysis} == {0}
    row = analysis[1]
    assert (row["shape"], row["params"], row["max_rank"], len(row["spectrum"])) == ((32, 64), 2048, 32, 32)
    assert row["effective_ranks"][0.5] <= row["effective_ranks"][0.9] <= 32
    assert len(plot_spectra(analysis).axes[0].lines) == 7
