"Checkpoints (hypercompress.checkpoint) on tiny models: recipes, every reload path, int8/int4 packing, atomic writes, clear errors."
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.utils import logging as transformers_logging

import hypercompress.checkpoint as checkpoint
from hypercompress.blt import apply_blt
from hypercompress.checkpoint import (CheckpointError, load, load_checkpoint,
                                      save_checkpoint, storage_bytes)
from hypercompress.config import load_config
from hypercompress.kv import apply_kv_latent, kv_proposals
from hypercompress.layers import FactorizedLinear, rebuild_from_recipe, structure_recipe
from hypercompress.quantize import dequantize_groups, quantize_groups
from hypercompress.models import build_tiny_model, count_parameters, iter_linears, linear_weight

transformers_logging.set_verbosity_error()
IDS = torch.tensor([list(b"To be, or not to be, that is the question")])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def close(model, reference, atol=1e-5):
    torch.testing.assert_close(logits(model), reference, atol=atol, rtol=0)


def compressed(name, latent_dim=16):
    "Factorized embedding + tied head, latent K/V (Llama only), every other linear factorized with a sparse residual."
    model, tokenizer = build_tiny_model(name)
    apply_blt(model, latent_dim, verbose=False)
    if name == "tiny-llama":
        apply_kv_latent(model, kv_proposals(model, 8), cache_tokens=64, sink_tokens=4)
    linears = [(n, m) for n, m in iter_linears(model) if not n.endswith((".down", ".up"))]
    for module_name, module in linears[::2]:
        W = linear_weight(module).detach()
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        indices = torch.tensor([[0, 1, 2], [3, 3, 0]], dtype=torch.int32)
        values = (W - (U[:, :8] * s[:8]) @ Vh[:8])[indices[0].long(), indices[1].long()]
        parent, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent), child,
                FactorizedLinear.from_factors(U[:, :8] * s[:8], Vh[:8], getattr(module, "bias", None), values, indices))
    return model, tokenizer


def make(name, is_compressed):
    return compressed(name) if is_compressed else build_tiny_model(name)


def fresh_base(model):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return AutoModelForCausalLM.from_config(model.config).eval()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_recipe_rebuilds_for_strict_load(name):
    model, _ = compressed(name)
    recipe = structure_recipe(model)
    assert json.loads(json.dumps(recipe)) == recipe
    types = {spec["type"] for spec in recipe}
    assert {"FactorizedEmbedding", "FactorizedTiedHead", "FactorizedLinear"} <= types
    assert ("LatentKVAttention" in types) == (name == "tiny-llama")
    rebuilt = rebuild_from_recipe(fresh_base(model), recipe)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.get_output_embeddings().embedding is rebuilt.get_input_embeddings()
    assert count_parameters(rebuilt) == count_parameters(model)
    close(rebuilt, logits(model), atol=1e-6)


def test_unregistered_package_module_is_refused():
    model, _ = build_tiny_model("tiny-gpt2")

    class Custom(nn.Linear):
        pass
    Custom.__module__ = "hypercompress.elsewhere"
    model.lm_head = Custom(64, 258)
    with pytest.raises(CheckpointError, match="lm_head: no checkpoint recipe for Custom"):
        structure_recipe(model)


@pytest.mark.parametrize("name,is_compressed", [("tiny-llama", False), ("tiny-llama", True), ("tiny-gpt2", False),
                                                ("tiny-gpt2", True)])
def test_every_reload_path_gives_the_same_logits(tmp_path, name, is_compressed):
    model, tokenizer = make(name, is_compressed)
    reference = logits(model)
    written = save_checkpoint(model, tokenizer, tmp_path, config=load_config(), plan={"latent_dim": 16},
                              metrics={"bpb": 1.25}, experiment="run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "hf", "run.pt", "run.safetensors", "versions"]
    assert written["storage_bytes"] == (tmp_path / "run.safetensors").stat().st_size
    payload = torch.load(tmp_path / "run.pt", weights_only=True)
    assert {"student_state_dict", "config", "plan", "metrics", "recipe", "hf_config", "format_version"} <= set(payload)
    assert payload["metrics"] == {"bpb": 1.25} and payload["config"]["storage"]["quantization"] == "none"
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hypercompress.HypercompressForCausalLM"
    assert config["hypercompress"]["recipe"] == structure_recipe(model)
    for loaded in (load(tmp_path)[0], load(tmp_path / "hf")[0], load_checkpoint(tmp_path / "run.pt")[0],
                   load(tmp_path / "run.safetensors")[0],
                   AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True)):
        close(loaded, reference)
    model_loaded, tokenizer_loaded = load(tmp_path)
    assert tokenizer_loaded.encode("To be") == tokenizer.encode("To be")
    assert structure_recipe(model_loaded) == structure_recipe(model)


REMOTE = '''
import sys, builtins, torch
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] == "hypercompress": raise ImportError("hypercompress must not be needed")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
from transformers import AutoModelForCausalLM
ids = torch.tensor([list(b"To be, or not to be, that is the question")])
for folder in sys.argv[1:]:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad(): torch.save(model(ids).logits, folder + "/remote_logits.pt")
'''


def test_remote_code_stands_alone(tmp_path):
    "A fresh process that cannot import hypercompress loads compressed and int4 folders with the same logits."
    cases = {"llama": (compressed("tiny-llama")[0], "none"), "gpt2-int4": (compressed("tiny-gpt2")[0], "int4"),
             "llama-int8": (compressed("tiny-llama")[0], "int8")}
    expected = {}
    for label, (model, quantization) in cases.items():
        save_checkpoint(model, None, tmp_path / label, quantization=quantization, group_size=16)
        expected[tmp_path / label / "hf"] = logits(load(tmp_path / label)[0])
    result = subprocess.run([sys.executable, "-c", REMOTE, *map(str, expected)], capture_output=True, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    for folder, reference in expected.items():
        torch.testing.assert_close(torch.load(folder / "remote_logits.pt"), reference, atol=1e-5, rtol=0)


def test_safe_serialization_false_and_config_settings(tmp_path):
    model, tokenizer = compressed("tiny-llama")
    config = load_config(None, overrides=["storage.hf_safe_serialization=false", "storage.export_format=pt",
                                          "logging.experiment=cfg"])
    written = save_checkpoint(model, tokenizer, tmp_path, config=config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.pt", "current", "hf", "versions"]
    assert (tmp_path / "hf" / "pytorch_model.bin").is_file()
    assert written["storage_bytes"] == (tmp_path / "cfg.pt").stat().st_size
    close(load(tmp_path)[0], logits(model))
    close(AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True), logits(model))
    save_checkpoint(model, tokenizer, tmp_path, experiment="cfg", save_pretrained=False)  # nothing stale left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.pt", "cfg.safetensors", "current", "tokenizer", "versions"]
    close(load(tmp_path)[0], logits(model))


def test_quantize_groups_error_bound():
    torch.manual_seed(0)
    W = torch.randn(5, 70) * torch.linspace(0.1, 3, 70)
    for bits in (8, 4):
        codes, scales = quantize_groups(W, bits, 32)
        assert scales.dtype == torch.float16 and scales.shape == (5, 3)
        assert codes.shape == ((5, 70) if bits == 8 else (5, 35))
        W_hat = dequantize_groups(codes, scales, 70, bits, 32)
        step = scales.float().repeat_interleave(32, 1)[:, :70]
        assert ((W - W_hat).abs() <= step / 2 + 1e-6).all()


def test_quantized_checkpoints_are_smaller_and_close(tmp_path):
    model, tokenizer = build_tiny_model("tiny-gpt2")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + torch.rand_like(p))
    reference = logits(model)
    sizes, errors = {}, {}
    for method in ("none", "int8", "int4"):
        written = save_checkpoint(model, tokenizer, tmp_path / method, quantization=method, group_size=64)
        sizes[method] = written["storage_bytes"]
        loaded = load(tmp_path / method)[0]
        assert next(loaded.parameters()).dtype == torch.float32
        close(load_checkpoint(tmp_path / method / "hypercompress.pt")[0], logits(loaded), atol=0)
        errors[method] = ((logits(loaded) - reference).norm() / reference.norm()).item()
    assert errors["none"] == 0
    assert sizes["int8"] < 0.28 * sizes["none"] and sizes["int4"] < 0.15 * sizes["none"]
    assert errors["int8"] < 0.03 and errors["int4"] < 0.4 and 10 < errors["int4"] / errors["int8"] < 30


def test_failed_save_keeps_the_earlier_checkpoint(tmp_path, monkeypatch):
    model, tokenizer = compressed("tiny-llama")
    save_checkpoint(model, tokenizer, tmp_path, experiment="run")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def half_then_fail(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 64)
        raise OSError("No space left on device (simulated)")
    monkeypatch.setattr(checkpoint, "save_file", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(compressed("tiny-llama", latent_dim=8)[0], tokenizer, tmp_path, experiment="run")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    close(load(tmp_path)[0], logits(model))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    model, tokenizer = build_tiny_model("tiny-llama")
    save_checkpoint(model, tokenizer, folder, experiment="run")
    return folder


def test_corrupt_files_give_clear_errors(saved, tmp_path):
    cases = {"run.pt": lambda d: load_checkpoint(d / "run.pt"), "run.safetensors": lambda d: load(d / "run.safetensors"),
             "hf/model.safetensors": lambda d: load(d / "hf")}
    for relative, reader in cases.items():
        copy = tmp_path / relative.replace("/", "_")
        subprocess.run(["cp", "-r", str(saved), str(copy)], check=True)
        target = copy / relative
        os.unlink(target)  # break the hard link before truncating
        target.write_bytes((saved / relative).read_bytes()[:1000])
        with pytest.raises(CheckpointError, match="is corrupt or truncated") as error:
            reader(copy)
        assert str(target.resolve()) in str(error.value)  # the file itself, in the version the link points to
    garbage = tmp_path / "garbage"
    subprocess.run(["cp", "-r", str(saved), str(garbage)], check=True)
    (garbage / "hf" / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"hf/config.json is corrupt or truncated"):
        load(garbage)


def test_pickled_objects_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run on load",))
    torch.save({"student_state_dict": {}, "hf_config": {}, "recipe": [], "format_version": 1, "x": Payload()},
               tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to load it"):
        load_checkpoint(tmp_path / "evil.pt")


def test_storage_bytes_counts_hard_links_once(saved):
    assert (saved / "hf" / "model.safetensors").stat().st_ino == (saved / "run.safetensors").stat().st_ino
    files = [p for p in checkpoint.result_folder(saved).rglob("*") if p.is_file()]
    assert storage_bytes(saved) == storage_bytes(checkpoint.result_folder(saved)) == sum(p.stat().st_size for p in files) - (saved / "run.safetensors").stat().st_size
