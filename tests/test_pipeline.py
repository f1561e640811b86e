"The pipeline end to end on tiny models, reloads, iterative runs and bad input, as a user runs it."
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

COMMAND = [shutil.which("hypercompress")] if shutil.which("hypercompress") else [
    sys.executable, "-c", "import sys; from hypercompress.cli import main; main(sys.argv[1:])"]
SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 60
FAST = ["distillation.token_budget=1024", "distillation.batch_size=4", "finetune.max_tokens=512",
        "finetune.eval_every_tokens=256", "evaluation.seq_len=64"]


def hypercompress(*args, cwd):
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, cwd=cwd)


def run_args(model, out, corpus, ratio=2, extra=()):
    sets = [a for s in FAST + list(extra) for a in ("--set", s)]
    return ["run", "--teacher-model", model, "--distill-data", str(corpus), "--ratio", str(ratio), "--seq-len", "32",
            "--output-dir", str(out), *sets, "--json"]


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(SAMPLE)
    return path


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_run_end_to_end_and_reload(model, corpus, tmp_path):
    out = tmp_path / "run"
    result = hypercompress(*run_args(model, out, corpus), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert "Teacher params:" in result.stdout and "param_ratio:" in result.stdout
    from hypercompress.checkpoint import load, load_checkpoint
    from hypercompress.models import count_parameters
    from transformers import AutoModelForCausalLM
    hf_model, _ = load(out / "hf")
    pt_model, _, payload = load_checkpoint(out / "hypercompress.pt")
    remote = AutoModelForCausalLM.from_pretrained(out / "hf", trust_remote_code=True).eval()
    assert summary["student_params"] == count_parameters(hf_model) == count_parameters(pt_model)
    assert summary["param_ratio"] == pytest.approx(summary["teacher_params"] / summary["student_params"])
    assert summary["param_ratio"] >= 1.95
    assert summary["storage_bytes"] > 0 and summary["tokens"]["distill"] == 1024
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = hf_model(input_ids=ids).logits
        torch.testing.assert_close(pt_model(input_ids=ids).logits, reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(remote(input_ids=ids).logits, reference, atol=1e-5, rtol=0)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["student_params"] == summary["student_params"] and (out / "summary.md").is_file()
    # scripts/quick_test.py (= `hypercompress check`) sees the same model: same count, same held-out BPB
    script = Path(__file__).resolve().parents[1] / "scripts" / "quick_test.py"
    checked = subprocess.run([sys.executable, str(script), "--checkpoint", str(out), "--data", str(corpus), "--seq-len", "64",
                              "--max-new-tokens", "8", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr[-3000:]
    checked = json.loads(checked.stdout.strip().splitlines()[-1])
    assert checked["params"] == summary["student_params"] and checked["sample"].startswith("ROMEO:")
    assert checked["bpb"] == pytest.approx(summary["student_bpb"], abs=1e-4)


def test_iterative_two_steps(corpus, tmp_path):
    first, second = tmp_path / "step1", tmp_path / "step2"
    # step 1 keeps the KV branch on (tiny-llama gets latent-KV attention); step 2 densifies it and compresses again
    assert hypercompress(*run_args("tiny-llama", first, corpus, ratio=2), cwd=tmp_path).returncode == 0
    from hypercompress.checkpoint import load
    assert any(type(m).__name__ == "LatentKVAttention" for m in load(first / "hf")[0].modules())
    result = hypercompress(*run_args("tiny-llama", second, corpus, ratio=2), "--teacher-checkpoint", str(first), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((first / "summary.json").read_text())
    two = json.loads((second / "summary.json").read_text())
    assert two["teacher_params"] == one["student_params"]  # the step-1 student is the teacher
    assert two["origin"]["teacher_params"] == one["teacher_params"]  # ratios also against the original teacher
    assert two["origin"]["param_ratio"] == pytest.approx(one["teacher_params"] / two["student_params"])
    assert two["origin"]["param_ratio"] >= 3.8


@pytest.mark.parametrize("args, expected", [
    (["--distill-data", "no/such/corpus.txt"], "no/such/corpus.txt"),
    (["--set", "branchs.lra.rank=4"], "did you mean 'branches'"),
    (["--set", "targets.compression_ratio=0.5"], "between 1 and 10000"),
    (["--teacher-model", "no/such/model"], "no/such/model"),
    (["--ratio", "1000"], "not reachable"),
    (["--set", "design.num_heads=2"], "design.num_heads"),  # a teacher-initialised student cannot split the teacher's heads
    (["--set", "design.num_kv_heads=1"], "design.num_kv_heads"),
    (["--set", "design.num_heads=4", "--set", "design.num_kv_heads=3", "--set", "distillation.student_init=random"], "design.num_kv_heads=3"),
])
def test_bad_input_clear_error(args, expected, corpus, tmp_path):
    base = ["run", "--teacher-model", "tiny-llama", "--distill-data", str(corpus), "--output-dir", str(tmp_path / "out"),
            *[a for s in FAST for a in ("--set", s)]]
    result = hypercompress(*base, *args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_corrupt_teacher_checkpoint(corpus, tmp_path):
    out = tmp_path / "good"
    assert hypercompress(*run_args("tiny-llama", out, corpus), cwd=tmp_path).returncode == 0
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    data = (broken / "hf" / "model.safetensors").read_bytes()
    (broken / "hf" / "model.safetensors").write_bytes(data[: len(data) // 3])
    result = hypercompress(*run_args("tiny-llama", tmp_path / "next", corpus), "--teacher-checkpoint", str(broken), cwd=tmp_path)
    assert result.returncode == 2 and "model.safetensors" in result.stderr and "Traceback" not in result.stderr


def test_interrupted_run_keeps_earlier_artifacts(corpus, tmp_path, monkeypatch):
    from hypercompress import checkpoint, pipeline
    out = tmp_path / "run"
    overrides = FAST + [f"logging.log_dir={tmp_path}/logs"]
    pipeline.run_pipeline(None, ["model.teacher=tiny-llama", f"data.distill={corpus}", "targets.compression_ratio=2", "data.seq_len=32",
                                 f"storage.checkpoint_dir={out}", *overrides], log=lambda m: None)
    before = digest(out)
    real_write = checkpoint.write_checkpoint

    def write_then_crash(*args, **kwargs):
        real_write(*args, **kwargs)  # files are fully written to the staging folder, then the run dies
        raise KeyboardInterrupt("simulated interruption")
    monkeypatch.setattr(checkpoint, "write_checkpoint", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(None, ["model.teacher=tiny-llama", f"data.distill={corpus}", "targets.compression_ratio=3",
                                     "data.seq_len=32", f"storage.checkpoint_dir={out}", *overrides], log=lambda m: None)
    assert digest(out) == before
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]
    assert not list(out.glob("versions/.staging-*")) and not (out / ".lock").exists()


def test_accelerate_data_parallel_matches_one_process(corpus, tmp_path):
    "`accelerate launch` with 2 CPU processes splits every distillation step; the result equals the one-process run."
    import os
    script = Path(__file__).resolve().parents[1] / "scripts" / "run_hf_pipeline.py"
    extra = ["distillation.token_budget=2048", "finetune.enabled=false"]
    one = hypercompress(*run_args("tiny-llama", tmp_path / "one", corpus, extra=extra), cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # two CPU processes (gloo) even where a GPU is present
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
                               *run_args("tiny-llama", tmp_path / "two", corpus, extra=extra)[1:]],
                              capture_output=True, text=True, cwd=tmp_path, env=env)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "data-parallel over 2 processes" in launched.stdout
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert a["tokens"]["distill"] == b["tokens"]["distill"] == 2048
    assert a["student_params"] == b["student_params"]
    assert b["student_bpb"] == pytest.approx(a["student_bpb"], abs=2e-3)
    assert json.loads(launched.stdout.strip().splitlines()[-1])["student_bpb"] == b["student_bpb"]  # printed once, by process 0


FRESH = """
from hypercompress.config import load_config
from hypercompress.models import build_tiny_model, count_parameters
from hypercompress.pipeline import compress
model, tokenizer = build_tiny_model("tiny-llama")
student, plan, state = compress(model, tokenizer, load_config(overrides=["targets.compression_ratio=3"]), log=lambda m: None)
print(sorted(state.artifacts), count_parameters(student) == plan.predicted_params)
"""


def test_compress_in_a_fresh_interpreter_runs_the_built_in_branches():
    "Importing only `compress` is enough: the built-in branches are there without importing their modules first."
    result = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]  # the plan prints its summary line first
    assert last == "['blt', 'kv', 'lra'] True", result.stdout


def test_a_planned_weight_no_branch_proposed_is_an_error():
    "Running only the sparsity branch on a plan with ranks used to be filled in by the merge's SVD, silently."
    from hypercompress.config import load_config
    from hypercompress.models import build_tiny_model
    from hypercompress.pipeline import compress
    model, tokenizer = build_tiny_model("tiny-llama")
    config = load_config(overrides=["targets.compression_ratio=3"])
    with pytest.raises(ValueError, match="no branch proposed"):
        compress(model, tokenizer, config, branches=["sparsity"], log=lambda m: None)
    student, plan, state = compress(model, tokenizer, config, branches=["sparsity"], log=lambda m: None, stand_in=True)
    assert "plan-svd" in state.artifacts  # the explicit stand-in, recorded


def test_teacher_written_text_on_the_teachers_own_architecture(corpus, tmp_path):
    "The factorize route mixes teacher-written windows in as well (the teacher's vocabulary, its own top-k targets)."
    out = tmp_path / "written"
    result = hypercompress(*run_args("tiny-llama", out, corpus, extra=["distillation.teacher_written.windows=2",
                                                                        "distillation.teacher_written.batch_size=4",
                                                                        "distillation.teacher_written.new_tokens=24",
                                                                        "distillation.teacher_written.prompt_tokens=8"]), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "teacher-written text:" in result.stdout
    training = json.loads((out / "summary.json").read_text())["training"]["distill"]
    assert training["teacher_written_tokens"] == 256  # ⌊32 · 0.25⌋ = 8 of the 32 windows read
