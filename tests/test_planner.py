"The planner's promise: the parameter count it predicts is the count of the model structural factorization builds."
import contextlib
import copy
import io
import json

import pytest
import torch

from hypercompress.branches import CompressionState, calibration_ids, run_branches
from hypercompress.cli import main
from hypercompress.config import load_config
from hypercompress.merge import merge_proposals
from hypercompress.models import build_tiny_model, count_parameters
from hypercompress.planner import minimum_parameters, plan, predicted_parameters, smollm2_shaped
from hypercompress.structural import apply_structural, compress_to_plan

IDS = torch.tensor([[256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]])


def _plan(model, ratio, *overrides):
    return plan(model, load_config(overrides=[f"targets.compression_ratio={ratio}", *overrides]), verbose=False)


CASES = [(ratio, overrides) for ratio in (2, 4, 10) for overrides in ([], ["branches.lra.sparsity=0.04"])]
CASES += [(4, ["branches.blt.latent_dim=8"]), (4, ["branches.kv.enabled=false"]), (2, ["branches.lra.enable_structural=false"])]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("ratio,overrides", CASES, ids=lambda value: str(value))
def test_prediction_equals_count(name, ratio, overrides):
    model, _ = build_tiny_model(name)
    p = _plan(model, ratio, *overrides)
    assert p.predicted_params == predicted_parameters(model, p)
    assert p.latent_dim is not None  # the embedding is factorized (by apply_blt inside apply_structural)
    report = compress_to_plan(model, p)
    assert count_parameters(model) == p.predicted_params == report.params_after
    assert type(model.get_input_embeddings()).__name__ == "FactorizedEmbedding"
    assert report.matches_plan and (p.structural or not report.replaced)
    with torch.no_grad(): assert torch.isfinite(model(IDS).logits).all()
    if p.feasible: assert p.predicted_params <= count_parameters(build_tiny_model(name)[0]) / ratio


def test_branches_then_structural_match_plan():
    model, tokenizer = build_tiny_model("tiny-llama")
    config = load_config(overrides=["targets.compression_ratio=4", "branches.blt.enabled=true", "branches.lra.sparsity=0.03",
                                    "branches.sparsity.target_sparsity=0.5"])
    calibration = calibration_ids(tokenizer, "To be, or not to be, that is the question. " * 40, n_sequences=4, seq_len=64)
    p = plan(model, config, calibration=calibration, verbose=False)
    state = CompressionState(model=model, tokenizer=tokenizer, config=config, plan=p, calibration=calibration, verbose=False)
    run_branches(state, ["blt", "lra", "kv", "sparsity"])
    merged = merge_proposals(state, p, log=None)
    apply_structural(model, merged, p, verbose=False)
    assert count_parameters(model) == p.predicted_params
    assert model.generate(IDS, max_new_tokens=4, do_sample=False).shape == (1, IDS.shape[1] + 4)


def test_plan_is_non_uniform_and_capped():
    model, _ = build_tiny_model("tiny-llama")
    p = _plan(model, 4, "targets.max_rank_fraction=0.25")
    assert len(set(p.ranks.values())) > 1
    assert max(p.ranks.values()) <= 0.25 * 64


def test_state_dict_round_trip():
    model, _ = build_tiny_model("tiny-llama")
    p = _plan(model, 4, "branches.lra.sparsity=0.05")
    compress_to_plan(model, p)
    fresh, _ = build_tiny_model("tiny-llama", seed=3)
    apply_structural(fresh, None, p, verbose=False)
    fresh.load_state_dict(copy.deepcopy(model.state_dict()), strict=True)
    with torch.no_grad(): torch.testing.assert_close(fresh(IDS).logits, model(IDS).logits)


def test_infeasible_target_says_so_with_numbers():
    smol = smollm2_shaped()  # SmolLM2-135M's shapes on the meta device
    p = _plan(smol, 1000)
    assert not p.feasible and p.budget == 134_515
    assert minimum_parameters(smol)["embedding"] == 49_728 and minimum_parameters(smol)["layers"] == 305_280
    text = " ".join(p.reasons)
    for number in ("134.5K", "49.7K", "305.3K", "344.8x", "smaller student architecture", "vocabulary"):
        assert number in text, number
    assert "INFEASIBLE" in p.summary()


def test_cli_plan_json():
    out = io.StringIO()
    with contextlib.redirect_stdout(out): main(["plan", "--teacher-model", "tiny-gpt2", "--ratio", "2", "--json"])
    planned = json.loads(out.getvalue())
    assert planned["feasible"] and planned["predicted_ratio"] >= 2 and planned["target_ratio"] == 2
