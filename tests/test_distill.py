"Distillation and fine-tuning (hypercompress.distill, hypercompress.finetune, on hypercompress.train) on tiny models: loss kernels by hand, exact token counts, cache = teacher, LoRA merge, masks, divergence, early stopping."
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from hypercompress.config import load_config
from hypercompress.data import make_chunks
from hypercompress.distill import distill
from hypercompress.finetune import finetune
from hypercompress.lora import LoraAdapters, add_lora, lora_ranks
from hypercompress.losses import activation_loss, kl_loss, layer_map, teacher_topk, topk_kl_loss
from hypercompress.teacher_cache import cache_teacher_topk, load_teacher_cache
from hypercompress.train import EarlyStopping, TrainingDivergedError, budget_batches
from hypercompress.models import build_tiny_model, count_nonzero, count_parameters, iter_linears, linear_weight
from hypercompress.sparsity import apply_masks, magnitude_mask

TEXT = ("ROMEO: But, soft! what light through yonder window breaks? It is the east, and Juliet is the sun. "
        "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief. ") * 4


def config(*overrides):
    return load_config(None, overrides=["distillation.batch_size=4", "distillation.learning_rate=3e-3", "data.batch_size=4",
                                        "evaluation.seq_len=64", "seed=0", "compute.precision=fp32", *overrides])


@pytest.fixture(scope="module")
def teacher():
    return build_tiny_model("tiny-llama", seed=1)


@pytest.fixture(scope="module")
def chunks(teacher):
    return make_chunks(teacher[1], TEXT, seq_len=32, max_chunks=8)


def quiet(*_): pass


def test_kl_by_hand():
    p, q = torch.tensor([0.8, 0.15, 0.05]), torch.tensor([0.3, 0.3, 0.4])
    forward, reverse = (p * (p / q).log()).sum(), (q * (q / p).log()).sum()
    s, t = q.log()[None], p.log()[None]
    assert kl_loss(s, t).item() == pytest.approx(forward.item(), abs=1e-6)
    assert kl_loss(s, t, direction="reverse").item() == pytest.approx(reverse.item(), abs=1e-6)
    assert kl_loss(s, t, direction="mixed").item() == pytest.approx((forward + reverse).item() / 2, abs=1e-6)
    assert kl_loss(t, t).item() == 0.0
    with pytest.raises(ValueError, match="direction"): kl_loss(s, t, direction="both")


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_kl_temperature_squared_scaling(temperature):
    s, t = torch.randn(3, 4, 9), torch.randn(3, 4, 9)
    p, log_q = F.softmax(t / temperature, -1), F.log_softmax(s / temperature, -1)
    plain = (p * (p.log() - log_q)).sum(-1).mean()
    assert kl_loss(s, t, temperature).item() == pytest.approx(temperature**2 * plain.item(), rel=1e-5)


@pytest.mark.parametrize("direction", ["forward", "reverse", "mixed"])
def test_topk_with_k_equal_v_is_full_kl(direction):
    s, t = torch.randn(2, 6, 13), torch.randn(2, 6, 13)
    indices, logprobs, rest = teacher_topk(t, 13, temperature=2.0)
    full = kl_loss(s, t, 2.0, direction).item()
    assert topk_kl_loss(s, indices, logprobs, 2.0, direction, rest).item() == pytest.approx(full, rel=1e-5)
    assert topk_kl_loss(s, indices, logprobs.half(), 2.0, direction).item() == pytest.approx(full, rel=1e-2)  # as cached


def test_topk_rest_bucket_by_hand_and_lower_bound():
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3])
    buckets_p, buckets_q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3])  # k=2: (p0, p1, rest)
    indices, logprobs, rest = teacher_topk(p.log()[None], 2)
    by_hand = (buckets_p * (buckets_p / buckets_q).log()).sum().item()
    assert topk_kl_loss(q.log()[None], indices, logprobs, rest_logprobs=rest).item() == pytest.approx(by_hand, abs=1e-6)
    s, t = torch.randn(20, 50), torch.randn(20, 50) * 3
    for k in (1, 5, 25):
        assert topk_kl_loss(s, *teacher_topk(t, k)[:2]).item() <= kl_loss(s, t).item() + 1e-6


def test_activation_loss_normalised_by_teacher_variance():
    h = torch.randn(50, 8) * 7 + 2
    assert activation_loss(h, h).item() == 0.0
    assert activation_loss(h.mean().expand_as(h), h).item() == pytest.approx(1.0, abs=1e-5)
    target = h + torch.randn_like(h)
    assert activation_loss(3 * h, 3 * target).item() == pytest.approx(activation_loss(h, target).item(), rel=1e-5)  # scale-free
    with pytest.raises(ValueError, match="projection"): activation_loss(torch.randn(50, 4), h)


def test_layer_map():
    assert layer_map(6, 30) == [4, 9, 14, 19, 24, 29]
    assert layer_map(4, 10) == [2, 4, 7, 9]
    assert layer_map(5, 5) == list(range(5))
    for n_student, n_teacher in [(1, 7), (3, 8), (7, 3), (12, 30)]:
        mapping = layer_map(n_student, n_teacher)
        assert mapping[-1] == n_teacher - 1 and mapping == sorted(mapping)


@pytest.mark.parametrize("budget", [1, 31, 32, 100, 257, 1000])
def test_budget_batches_exact(budget):
    steps = list(budget_batches(n_chunks=3, seq_len=32, batch_size=2, token_budget=budget, seed=1))
    assert sum(n for _, n, _ in steps) == budget
    assert all(n <= len(i) * 32 and n > (len(i) - 1) * 32 for i, n, _ in steps)


def test_lora_ranks_rule():
    assert lora_ranks(30) == [16] * 10 + [8] * 10 + [4] * 10
    assert lora_ranks(3, 2) == [2, 1, 1]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_lora_merge_equals_adapted_and_keeps_masks(name):
    model, _ = build_tiny_model(name)
    masks = {n: magnitude_mask(linear_weight(m).detach(), 0.5) for n, m in iter_linears(model)}
    apply_masks(model, masks)
    n_params, nonzero = count_parameters(model), count_nonzero(model)
    adapters = add_lora(model, rank=4)
    assert isinstance(adapters, LoraAdapters) and count_parameters(model) == n_params
    with torch.no_grad():
        for adapter in adapters.adapters.values(): adapter.B.normal_()
    ids = torch.randint(0, 256, (2, 10))
    adapted = model(input_ids=ids).logits
    adapters.merge()
    torch.testing.assert_close(model(input_ids=ids).logits, adapted, atol=1e-4, rtol=1e-4)
    assert count_parameters(model) == n_params and count_nonzero(model) <= nonzero
    modules = dict(model.named_modules())
    assert all(linear_weight(modules[n])[~m].abs().max() == 0 for n, m in masks.items())


def test_distill_counts_tokens_exactly_and_learns(teacher, chunks):
    model, tokenizer = teacher
    student = build_tiny_model("tiny-llama", seed=2)[0]
    result = distill(model, student, tokenizer, chunks, config("distillation.token_budget=777"), progress=False, log=quiet)
    assert result.tokens == 777 and result.curve[-1]["tokens"] == 777 and result.stopped_reason == "token_budget"
    assert result.curve[-1]["loss"] < result.curve[0]["loss"]
    assert sum(len(m._forward_hooks) for m in student.modules()) == 0


def test_cache_with_k_equal_v_matches_teacher(teacher, chunks, tmp_path):
    model, tokenizer = teacher
    settings = config("distillation.token_budget=384", "branches.kv.enabled=false")
    live = distill(model, build_tiny_model("tiny-llama", seed=2)[0], tokenizer, chunks, settings, progress=False, log=quiet)
    path = cache_teacher_topk(model, chunks, len(tokenizer), tmp_path / "c.safetensors", temperature=2.0, progress=False)
    cache = load_teacher_cache(path)
    assert cache.k == len(tokenizer) and cache.logprobs.dtype == torch.float16 and cache.indices.dtype == torch.int32
    cached = distill(path, build_tiny_model("tiny-llama", seed=2)[0], tokenizer, chunks, settings, progress=False, log=quiet)
    assert [r["loss"] for r in cached.curve] == pytest.approx([r["loss"] for r in live.curve], abs=2e-3)
    with pytest.raises(ValueError, match="temperature"):
        distill(path, build_tiny_model("tiny-llama", seed=2)[0], tokenizer, chunks,
                config("distillation.token_budget=64", "distillation.temperature=1.0"), progress=False, log=quiet)


def test_hierarchical_lora_trains_adapters_and_merges(teacher, chunks):
    model, tokenizer = teacher
    student = build_tiny_model("tiny-llama", seed=2)[0]
    before, n_params = copy.deepcopy(student.state_dict()), count_parameters(student)
    result = distill(model, student, tokenizer, chunks, config("distillation.token_budget=256", "distillation.hierarchical_lora=true"),
                     progress=False, log=quiet)
    assert result.lora_ranks == [16, 8] and count_parameters(student) == n_params
    after = student.state_dict()
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert not torch.equal(after["model.layers.1.mlp.down_proj.weight"], before["model.layers.1.mlp.down_proj.weight"])


def test_divergence_restores_last_good_weights(teacher, chunks):
    model, tokenizer = teacher
    student = build_tiny_model("tiny-llama", seed=2)[0]
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(TrainingDivergedError, match="diverged") as caught:
        distill(model, student, tokenizer, chunks, config("distillation.token_budget=2048", "distillation.learning_rate=1e4"),
                progress=False, log=quiet)
    assert caught.value.result.stopped_reason == "diverged"
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_early_stopping_rule():
    stopper = EarlyStopping(patience=3, tolerance=0.1)
    assert [stopper.update(p) for p in (10.0, 9.5, 9.2, 8.9, 8.0)] == [True, False, False, True, True]
    assert not stopper.stop
    for p in (7.9, 7.8, 7.7): stopper.update(p)
    assert stopper.stop


def test_finetune_exact_tokens_and_best_restored(teacher):
    _, tokenizer = teacher
    model = build_tiny_model("tiny-llama")[0]
    train, val = TEXT[:-150], TEXT[-150:]
    chunks = make_chunks(tokenizer, train, seq_len=32)
    result = finetune(model, tokenizer, chunks, val, config("finetune.max_tokens=333", "finetune.eval_every_tokens=128",
                                                            "finetune.learning_rate=3e-3", "finetune.patience=5"),
                      progress=False, log=quiet)
    assert result.tokens == 333 and [r["tokens"] for r in result.curve] == [0, 128, 256, 333]
    assert result.best_bpb == min(r["val_bpb"] for r in result.curve)
    # a phase that only makes validation worse ends with the starting weights
    model = build_tiny_model("tiny-llama")[0]
    before = copy.deepcopy(model.state_dict())
    worse = make_chunks(tokenizer, "q" * 1024, seq_len=32)
    result = finetune(model, tokenizer, worse, val, config("finetune.max_tokens=4096", "finetune.eval_every_tokens=256",
                                                           "finetune.learning_rate=5e-2", "finetune.patience=2"),
                      progress=False, log=quiet)
    assert result.stopped_early and result.best_tokens == 0 and result.tokens == 512
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert math.isfinite(result.best_bpb)


def test_metric_sinks_say_when_skipped(tmp_path):
    from hypercompress.train import MetricSinks
    pytest.importorskip("torch.utils.tensorboard")
    lines = []
    settings = config(f"logging.log_dir={tmp_path}", "logging.experiment=x", "logging.tensorboard=true",
                      "logging.enable_wandb=true").logging
    sinks = MetricSinks(settings, "distill", lines.append)
    sinks.scalars({"loss": 1.0, "nan": float("nan")}, 10)
    sinks.close()
    assert list((tmp_path / "x").glob("events.out.tfevents.*"))
    try: import wandb  # noqa: F401
    except ImportError: assert any(line.startswith("W&B skipped") for line in lines)
