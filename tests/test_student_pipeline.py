"Designed students end to end through `hypercompress run`: same vocabulary, byte vocabulary (cross-vocabulary distillation), from scratch."
import json

import pytest
import torch

from test_pipeline import FAST, SAMPLE, hypercompress


@pytest.fixture(scope="module")
def bpe_teacher(tmp_path_factory):
    "A tiny Llama whose tokenizer is a byte-level BPE (as SmolLM2's), saved as a Hugging Face folder."
    from transformers import LlamaConfig, LlamaForCausalLM

    from hypercompress.vocab import train_byte_level_bpe
    folder = tmp_path_factory.mktemp("bpe-teacher")
    tokenizer = train_byte_level_bpe(SAMPLE, 320)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder.parent / "corpus.txt").write_text(SAMPLE)
    return folder


def designed_run(teacher, out, corpus, *extra):
    sets = [a for s in FAST + ["evaluation.ablation_branches=true", *extra] for a in ("--set", s)]
    return hypercompress("run", "--teacher-model", str(teacher), "--distill-data", str(corpus), "--seq-len", "32",
                         "--output-dir", str(out), *sets, "--json", cwd=out.parent)


@pytest.mark.parametrize("vocab", ["teacher", "bytes"])
def test_designed_student_run_and_reload(vocab, bpe_teacher, tmp_path):
    from hypercompress.checkpoint import load
    from hypercompress.models import count_parameters
    out = tmp_path / f"run-{vocab}"
    result = designed_run(bpe_teacher, out, bpe_teacher.parent / "corpus.txt", "mode=distill-only",
                          "targets.compression_ratio=6", "branches.blt.enabled=true", f"branches.blt.vocab={vocab}",
                          "distillation.cross_vocab.leak_tolerance=10")  # a random teacher's marginal may beat its own tokenization
    assert result.returncode == 0, result.stderr[-3000:]
    assert "🧬 Designing a student..." in result.stdout and "ablation skipped" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    model, tokenizer = load(out / "hf")
    assert summary["student_params"] == count_parameters(model) <= summary["teacher_params"] // 6
    assert summary["plan"]["kind"] == "designed_student" and summary["plan"]["vocabulary"] == vocab
    assert summary["tokens"]["distill"] == 1024 and summary["branches"] == {}
    assert ("targets_bpb" in summary and "teacher_bpb_on_targets_slice" in summary) == (vocab == "bytes")
    assert (len(tokenizer) < 280) == (vocab == "bytes")  # the byte vocabulary: 256 bytes + special tokens
    from transformers import AutoModelForCausalLM, AutoTokenizer
    plain = AutoModelForCausalLM.from_pretrained(out / "hf").eval()  # a designed student is a plain Llama
    assert count_parameters(plain) == summary["student_params"]
    assert AutoTokenizer.from_pretrained(out / "hf")("Speak, speak.").input_ids == tokenizer("Speak, speak.").input_ids


def test_from_scratch_baseline_needs_no_teacher_pass(bpe_teacher, tmp_path):
    out = tmp_path / "scratch"
    result = designed_run(bpe_teacher, out, bpe_teacher.parent / "corpus.txt", "mode=distill-only", "targets.compression_ratio=6",
                          "branches.blt.enabled=true", "branches.blt.vocab=bytes", "distillation.student_init=random",
                          "distillation.kl_weight=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cross-entropy only" in result.stdout and "projected" not in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plan"]["init"] == "random" and summary["tokens"]["distill"] == 1024


def test_infeasible_target_names_the_vocabulary(bpe_teacher, tmp_path):
    out = tmp_path / "too-far"
    result = designed_run(bpe_teacher, out, bpe_teacher.parent / "corpus.txt", "targets.compression_ratio=5000")
    assert result.returncode == 2 and "not reachable" in result.stderr and "vocabulary" in result.stderr
    assert not out.exists()


def test_targets_check_stops_the_run(bpe_teacher, tmp_path):
    "Targets that beat the teacher by more than the tolerance (here none: a random teacher's marginal beats its own tokenization) stop the run."
    out = tmp_path / "leaky"
    result = designed_run(bpe_teacher, out, bpe_teacher.parent / "corpus.txt", "mode=distill-only",
                          "targets.compression_ratio=6", "branches.blt.enabled=true", "branches.blt.vocab=bytes",
                          "distillation.cross_vocab.leak_tolerance=0")
    assert result.returncode == 2, [line for line in result.stdout.splitlines() if "leak check" in line]
    line = result.stderr.strip().splitlines()[-1]
    assert "cross-vocabulary targets score" in line and "better than the teacher's own" in line and "Traceback" not in result.stderr
    assert "Distilling" in result.stdout and not (out / "summary.json").exists()  # stopped in the distillation phase, nothing published


def test_teacher_assistant_chain(bpe_teacher, tmp_path):
    "135M → assistant → student in small: a byte student teaches a smaller byte student, with the ratio against the original teacher."
    from hypercompress.checkpoint import load
    from hypercompress.models import count_parameters
    corpus, common = bpe_teacher.parent / "corpus.txt", ["mode=distill-only", "branches.blt.enabled=true", "branches.blt.vocab=bytes",
                                                         "distillation.cross_vocab.leak_tolerance=10", "distillation.student_init=random"]
    assistant = tmp_path / "assistant"
    first = designed_run(bpe_teacher, assistant, corpus, *common, "targets.compression_ratio=3")
    assert first.returncode == 0, first.stderr[-3000:]
    original = json.loads((assistant / "summary.json").read_text())["teacher_params"]
    out = tmp_path / "hop"
    sets = [a for s in FAST + [*common, "targets.compression_ratio=6", "targets.relative_to=original"] for a in ("--set", s)]
    second = hypercompress("run", "--teacher-checkpoint", str(assistant), "--distill-data", str(corpus), "--seq-len", "32",
                           "--output-dir", str(out), *sets, "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "against the original teacher" in second.stdout and "no cross-vocabulary beam" in second.stdout
    summary = json.loads((out / "summary.json").read_text())
    model, _ = load(out / "hf")
    assert summary["origin"]["teacher_params"] == original and summary["student_params"] == count_parameters(model) <= original // 6
    assert summary["teacher_params"] == json.loads((assistant / "summary.json").read_text())["student_params"]  # the assistant taught
    assert summary["origin"]["param_ratio"] >= 6


def test_teacher_written_text_is_labelled_and_mixed_in(bpe_teacher, tmp_path):
    "Text the teacher writes is labelled like the real split and read at the configured share; epochs count the real text."
    out = tmp_path / "written"
    result = designed_run(bpe_teacher, out, bpe_teacher.parent / "corpus.txt", "mode=distill-only", "targets.compression_ratio=6",
                          "branches.blt.enabled=true", "branches.blt.vocab=bytes", "distillation.cross_vocab.leak_tolerance=10",
                          "distillation.cross_vocab.lossy_tolerance=10", "distillation.teacher_written.windows=4",
                          "distillation.teacher_written.batch_size=4", "distillation.teacher_written.new_tokens=24",
                          "distillation.teacher_written.prompt_tokens=8", "distillation.teacher_written.fraction=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "teacher-written text:" in result.stdout and "leak check on" in result.stdout
    assert "teacher-written tokens" in result.stdout
    training = json.loads((out / "summary.json").read_text())["training"]["distill"]
    assert training["teacher_written_tokens"] == 512  # 1024 tokens in windows of 32: ⌊32 · 0.5⌋ windows from the teacher's text
    assert training["epochs"] == pytest.approx(512 / training["epoch_tokens"])  # epochs over the real text only
