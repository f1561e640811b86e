"Student design keeps its promises: exact counts, never above the budget, valid GQA, and students that save and reload."
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from hypercompress.branches import calibration_ids
from hypercompress.models import build_tiny_model, count_parameters
from hypercompress.planner import smollm2_shaped
from hypercompress.student import (StudentShape, design_student, init_from_teacher, llama_parameters, select_heads,
                                   teacher_importance)

SMOLLM2 = smollm2_shaped().config  # SmolLM2-135M's architecture on the meta device: no weights loaded
BUDGETS = torch.logspace(math.log10(20_000), math.log10(20_000_000), 25).long().tolist()
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40


def _built(shape, teacher_config):
    with torch.device("meta"): return LlamaForCausalLM(shape.llama_config(teacher_config))


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_tiny_model("tiny-llama")
    calibration = calibration_ids(tokenizer, TEXT, n_sequences=4, seq_len=32)
    return model, tokenizer, calibration, teacher_importance(model, calibration)


@pytest.mark.parametrize("vocab_size", [258, 1024, 8192])
def test_designed_students_are_counted_exactly_and_fit(vocab_size):
    designed = 0
    for budget in BUDGETS:
        try: shape = design_student(budget, SMOLLM2, vocab_size)
        except ValueError as error:
            assert "is below the smallest student" in str(error)
            continue
        designed += 1
        assert shape.predicted_parameters <= budget
        assert count_parameters(_built(shape, SMOLLM2)) == shape.predicted_parameters
    assert designed >= len(BUDGETS) - 8


@pytest.mark.parametrize("budget", BUDGETS[::3])
def test_gqa_is_valid_and_copyable(budget):
    shape = design_student(budget, SMOLLM2, 258)
    assert shape.num_heads % shape.num_kv_heads == 0 and shape.hidden_size % shape.num_heads == 0
    assert shape.num_kv_heads <= 3 and shape.num_heads // shape.num_kv_heads <= 3  # whole groups of SmolLM2's 9/3
    assert shape.head_dim == 64 and shape.hidden_size % 8 == 0 and shape.intermediate_size % 8 == 0
    assert shape.num_layers <= 30 and shape.hidden_size <= 576 and shape.intermediate_size <= 1536
    select_heads(torch.rand(9), 3, shape.num_heads, shape.num_kv_heads)  # the grouping can be taken from the teacher


def test_playbook_shapes():
    assert design_student(134_515_008, SMOLLM2, 49152) == StudentShape(49152, 576, 30, 9, 3, 64, 1536, budget=134_515_008)
    for ratio in (100, 1000):
        budget = 134_515_008 // ratio
        shape = design_student(budget, SMOLLM2, 258)
        assert budget * 0.95 <= shape.predicted_parameters <= budget


def test_llama_formula_matches_transformers():
    for args in [(258, 56, 3, 1, 1, 64, 152), (1000, 96, 4, 6, 2, 16, 200), (49152, 576, 30, 9, 3, 64, 1536)]:
        shape = StudentShape(*args)
        assert llama_parameters(*args) == shape.predicted_parameters == count_parameters(_built(shape, SMOLLM2))


def test_budget_too_small_says_what_fits():
    with pytest.raises(ValueError, match=r"49,152-symbol vocabulary.*at most 16,483 vocabulary symbols fit"):
        design_student(134_515, SMOLLM2, 49152)
    shape = design_student(134_515, SMOLLM2, 16_483)  # the size the message names does fit
    assert shape.predicted_parameters <= 134_515
    with pytest.raises(ValueError, match="no vocabulary fits.*raise the budget to at least"):
        design_student(2_000, SMOLLM2, 258)
    with pytest.raises(ValueError, match="must be positive"):
        design_student(0, SMOLLM2, 258)


def test_full_shape_student_is_the_teacher(tiny):
    model, _, calibration, importance = tiny
    student = init_from_teacher(StudentShape.from_config(model.config), model, importance)
    with torch.no_grad(): assert torch.equal(student(calibration).logits, model(calibration).logits)


def test_initialised_student_saves_and_reloads(tiny, tmp_path):
    model, _, calibration, importance = tiny
    shape = design_student(30_000, model.config, 258)
    student = init_from_teacher(shape, model, importance)
    assert count_parameters(student) == shape.predicted_parameters <= 30_000
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is LlamaForCausalLM and count_parameters(reloaded) == shape.predicted_parameters
    with torch.no_grad(): assert torch.equal(reloaded(calibration).logits, student(calibration).logits)


def test_initialisation_is_deterministic_and_rejects_larger_students(tiny):
    model, _, _, importance = tiny
    shape = StudentShape(258, 32, 1, 2, 1, 16, 48)
    first, second = init_from_teacher(shape, model, importance), init_from_teacher(shape, model, importance)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    with pytest.raises(ValueError, match="larger than the teacher"):
        init_from_teacher(StudentShape(258, 64, 3, 4, 2, 16, 128), model, importance)
