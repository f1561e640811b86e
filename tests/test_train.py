"The one training loop (hypercompress.train): distillation and fine-tuning both run on it, and on a fixed plan give the losses the two loops they replaced gave."
import pytest
import torch

from hypercompress.config import load_config
from hypercompress.data import make_chunks
from hypercompress.distill import distill
from hypercompress.finetune import finetune
from hypercompress.models import build_tiny_model
from hypercompress.teacher_cache import cache_teacher_topk
from hypercompress.train import TrainingLoop

TEXT = ("ROMEO: But, soft! what light through yonder window breaks? It is the east, and Juliet is the sun. "
        "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief. ") * 4

REFERENCE = {  # computed at commit 1defaa4, before the loops were one (fp32, one thread): (loss, grad_norm) per step
    'live': [(5.836630821228027, 3.0885722637176514), (5.619225978851318, 3.593427896499634), (5.463865280151367, 4.641567230224609)],
    'cached': [(5.560731410980225, 2.364015579223633), (5.2151970863342285, 2.303725481033325), (4.956514358520508, 1.9582613706588745)],
    'scratch': [(5.55812931060791, 2.3632771968841553), (5.212409019470215, 2.303892135620117), (4.952526092529297, 1.9583215713500977)],
    'lora': [(6.898100852966309, 1.0685265064239502), (6.783874988555908, 0.9870309829711914), (6.64082145690918, 0.903127133846283)],
    'finetune': dict(step_losses=[5.5807414054870605, 5.29929780960083, 5.062647342681885],
                     val_bpb=[8.00103098230224, 7.668000580587292, 7.215682191303381, 7.178400957145164]),
}

RUNS = {"live": ["distillation.token_budget=300"],
        "cached": ["distillation.token_budget=300", "branches.kv.enabled=false"],
        "scratch": ["distillation.token_budget=300", "distillation.kl_weight=0"],
        "lora": ["distillation.token_budget=300", "distillation.hierarchical_lora=true", "distillation.activation_weight=0.5"]}


def config(*overrides):
    return load_config(None, overrides=["distillation.batch_size=4", "distillation.learning_rate=3e-3", "data.batch_size=4",
                                        "evaluation.seq_len=64", "seed=0", "compute.precision=fp32", "compute.threads=1",
                                        *overrides])


def quiet(*_): pass


@pytest.fixture(scope="module")
def teacher():
    return build_tiny_model("tiny-llama", seed=1)


@pytest.mark.parametrize("run", list(RUNS))
def test_distillation_losses_as_before(run, teacher, tmp_path):
    "Each step's loss and gradient norm, to 1e-6, for a live teacher (KL + CE + attention), a cache (fused KL + CE), no teacher, LoRA with hidden states."
    model, tokenizer = teacher
    chunks = make_chunks(tokenizer, TEXT, seq_len=32, max_chunks=8)
    source = {"live": model, "lora": model, "scratch": None,
              "cached": cache_teacher_topk(model, chunks, 8, tmp_path / "c.safetensors", temperature=2.0, progress=False)}[run]
    result = distill(source, build_tiny_model("tiny-llama", seed=2)[0], tokenizer, chunks, config(*RUNS[run]), progress=False, log=quiet)
    found = [x for r in result.curve for x in (r["loss"], r["grad_norm"])]
    assert len(result.curve) == len(REFERENCE[run])
    assert found == pytest.approx([x for pair in REFERENCE[run] for x in pair], abs=1e-6, rel=0)
    assert result.tokens == 300 and result.precision == "fp32"


def test_finetune_losses_as_before(teacher):
    _, tokenizer = teacher
    model = build_tiny_model("tiny-llama")[0]
    result = finetune(model, tokenizer, make_chunks(tokenizer, TEXT[:-150], seq_len=32), TEXT[-150:],
                      config("finetune.max_tokens=333", "finetune.eval_every_tokens=128", "finetune.learning_rate=3e-3",
                             "finetune.patience=5"), progress=False, log=quiet)
    assert result.step_losses == pytest.approx(REFERENCE["finetune"]["step_losses"], abs=1e-6, rel=0)
    assert [r["val_bpb"] for r in result.curve] == pytest.approx(REFERENCE["finetune"]["val_bpb"], abs=1e-6, rel=0)


def test_distill_and_finetune_run_on_the_one_loop(teacher, monkeypatch):
    model, tokenizer = teacher
    phases, run = [], TrainingLoop.run
    def recording(loop):
        phases.append(loop.phase)
        return run(loop)
    monkeypatch.setattr(TrainingLoop, "run", recording)
    chunks = make_chunks(tokenizer, TEXT, seq_len=32, max_chunks=8)
    student = build_tiny_model("tiny-llama", seed=2)[0]
    distill(model, student, tokenizer, chunks, config("distillation.token_budget=64"), progress=False, log=quiet)
    finetune(student, tokenizer, chunks, TEXT[-150:], config("finetune.max_tokens=64"), progress=False, log=quiet)
    assert phases == ["distillation", "fine-tuning"]


@pytest.mark.parametrize("phase", ["distill", "finetune"])
def test_bf16_training_keeps_fp32_weights_and_close_losses(phase, teacher):
    model, tokenizer = teacher
    chunks = make_chunks(tokenizer, TEXT, seq_len=32, max_chunks=8)
    curves = {}
    for precision in ("fp32", "bf16"):
        student = build_tiny_model("tiny-llama", seed=2)[0]
        settings = config("distillation.token_budget=256", "finetune.max_tokens=256", f"compute.precision={precision}")
        if phase == "distill": curves[precision] = [r["loss"] for r in distill(model, student, tokenizer, chunks, settings,
                                                                                 progress=False, log=quiet).curve]
        else: curves[precision] = finetune(student, tokenizer, chunks, TEXT[-150:], settings, progress=False, log=quiet).step_losses
        assert {p.dtype for p in student.parameters()} == {torch.float32}
    assert curves["bf16"] != curves["fp32"]  # autocast really ran
    assert curves["bf16"] == pytest.approx(curves["fp32"], abs=0.05)


def test_compiled_student_trains_the_same(teacher):
    "compute.compile runs the student through torch.compile: the same curve (compiling a tiny model takes ~30 s)."
    model, tokenizer = teacher
    chunks = make_chunks(tokenizer, TEXT, seq_len=32, max_chunks=8)
    curves = [[r["loss"] for r in distill(model, build_tiny_model("tiny-llama", seed=2)[0], tokenizer, chunks,
                                          config("distillation.token_budget=256", "branches.kv.enabled=false",
                                                 f"compute.compile={flag}"), progress=False, log=quiet).curve]
              for flag in ("false", "true")]
    assert curves[1] == pytest.approx(curves[0], abs=1e-5, rel=0)
