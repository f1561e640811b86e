"The shared teacher-target cache (hypercompress.teacher_cache) as runs use it: the teacher runs once per key, other keys and corrupt entries are rebuilt (never used), epochs are counted exactly, `hypercompress cache` lists and clears."
import copy
import json
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from hypercompress.config import load_config
from hypercompress.data import make_chunks
from hypercompress.distill import distill, distillation_targets
from hypercompress.models import build_tiny_model
from hypercompress.pipeline import run_pipeline
from hypercompress.teacher_cache import cache_entries, cached_targets, shared_teacher_topk

SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 60
CACHED = ["distillation.token_budget=1024", "distillation.batch_size=4", "distillation.top_k=8", "branches.kv.enabled=false",
          "finetune.max_tokens=256", "finetune.eval_every_tokens=256", "evaluation.seq_len=64", "data.batch_size=4"]
COMMAND = [shutil.which("hypercompress")] if shutil.which("hypercompress") else [
    sys.executable, "-c", "import sys; from hypercompress.cli import main; main(sys.argv[1:])"]


def quiet(*_): pass


def refusing_hook(teacher):
    "A forward pre-hook that fails when `teacher` itself runs (compression's copies of it may run)."
    def hook(module, args, kwargs):
        if module is teacher: raise AssertionError("the teacher ran")
    return hook


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(SAMPLE)
    return path


def test_second_run_does_not_run_the_teacher(corpus, tmp_path):
    teacher, tokenizer = build_tiny_model("tiny-llama", seed=1)
    overrides = CACHED + [f"storage.cache_dir={tmp_path / 'cache'}"]
    def run(out, **kwargs): return run_pipeline(None, [f"data.distill={corpus}", "targets.compression_ratio=2", "data.seq_len=32",
                                                       f"storage.checkpoint_dir={tmp_path / out}", *overrides],
                                                teacher=(teacher, tokenizer), log=quiet, **kwargs)
    first = run("one")
    assert first["training"]["distill"]["targets"] == "cache" and first["tokens"]["distill"] == 1024
    assert first["training"]["distill"]["teacher_train_bpb"] > 0
    handle = teacher.register_forward_pre_hook(refusing_hook(teacher), with_kwargs=True)
    try:
        with pytest.raises(AssertionError, match="the teacher ran"):  # the hook works: the teacher's own BPB needs it
            run("probe")
        second = run("two", teacher_bpb=first["teacher_bpb"])  # the targets come from the cache: the teacher never runs
        changed = dict(temperature="distillation.temperature=1.0", k="distillation.top_k=4", text="data.max_chunks=20")
        for name, override in changed.items():  # another key: the teacher must run, so the refusing teacher fails
            with pytest.raises(AssertionError, match="the teacher ran"):
                run_pipeline(None, [f"data.distill={corpus}", "targets.compression_ratio=2", "data.seq_len=32",
                                    f"storage.checkpoint_dir={tmp_path / name}", *overrides, override],
                             teacher=(teacher, tokenizer), log=quiet, teacher_bpb=first["teacher_bpb"])
    finally: handle.remove()
    assert second["student_bpb"] == first["student_bpb"]  # the same targets, the same student
    assert len(cache_entries(tmp_path / "cache")) == 1


def test_cli_second_run_reuses_the_cache(corpus, tmp_path):
    env = dict(__import__("os").environ, HYPERCOMPRESS_CACHE=str(tmp_path / "cache"))
    def run(out):
        sets = [a for s in CACHED for a in ("--set", s)]
        done = subprocess.run([*COMMAND, "run", "--teacher-model", "tiny-llama", "--distill-data", str(corpus), "--ratio", "2",
                               "--seq-len", "32", "--output-dir", str(tmp_path / out), *sets], capture_output=True, text=True,
                              cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout
    first, second = run("one"), run("two")
    assert "teacher pass over" in first and "targets built" in first
    assert "teacher pass over" not in second and "found in the cache" in second
    listed = subprocess.run([*COMMAND, "cache", "list", "--json"], capture_output=True, text=True, env=env)
    entries = json.loads(listed.stdout)["entries"]
    assert [e["fields"]["k"] for e in entries] == [8] and entries[0]["status"] == "ok" and entries[0]["bytes"] > 0
    cleared = subprocess.run([*COMMAND, "cache", "clear"], capture_output=True, text=True, env=env)
    assert cleared.returncode == 0 and f"removed 1 entry, {entries[0]['bytes']:,} bytes freed" in cleared.stdout
    assert not cache_entries(tmp_path / "cache")


def test_key_mismatch_rebuilds_and_corrupt_is_never_used(tmp_path):
    teacher, tokenizer = build_tiny_model("tiny-llama", seed=1)
    chunks = make_chunks(tokenizer, SAMPLE, seq_len=32, max_chunks=8)
    first = shared_teacher_topk(teacher, chunks, 5, 2.0, cache_dir=tmp_path, log=quiet, progress=False)
    refusing = copy.deepcopy(teacher)
    refusing.register_forward_pre_hook(refusing_hook(refusing), with_kwargs=True)
    assert torch.equal(shared_teacher_topk(refusing, chunks, 5, 2.0, cache_dir=tmp_path, log=quiet).indices, first.indices)
    other_text = make_chunks(tokenizer, SAMPLE[7:], seq_len=32, max_chunks=8)
    for settings in (dict(temperature=1.0), dict(k=4), dict(chunks=other_text), dict(precision="bf16")):
        arguments = dict(chunks=chunks, k=5, temperature=2.0) | settings
        with pytest.raises(AssertionError, match="the teacher ran"):
            shared_teacher_topk(refusing, cache_dir=tmp_path, log=quiet, progress=False, **arguments)
    other = shared_teacher_topk(teacher, chunks, 5, 1.0, cache_dir=tmp_path, log=quiet, progress=False)
    assert other.temperature == 1.0 and not torch.equal(other.logprobs, first.logprobs)
    # a corrupt file: a warning, a rebuild from the teacher, never the corrupt numbers
    entry = next(e.path for e in cache_entries(tmp_path) if e.record["fields"]["temperature"] == 2.0)
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(AssertionError, match="the teacher ran"):
            shared_teacher_topk(refusing, chunks, 5, 2.0, cache_dir=tmp_path, log=quiet, progress=False)
        rebuilt = shared_teacher_topk(teacher, chunks, 5, 2.0, cache_dir=tmp_path, log=quiet, progress=False)
    assert any("corrupt" in str(w.message) and "not used" in str(w.message) for w in caught)
    assert torch.equal(rebuilt.logprobs, first.logprobs)


def test_another_kind_of_targets_through_the_same_api(tmp_path):
    "The interface other target kinds (cross-vocabulary projections) store through: build once, check, reuse."
    built = []
    def build(path):
        built.append(path)
        torch.save(dict(targets=torch.arange(6)), path)
    def verify(path):
        if not torch.equal(torch.load(path)["targets"], torch.arange(6)): raise ValueError("not these targets")
    fields = dict(kind="xvocab-topk", teacher="abc", vocabulary="bytes", teacher_top_k=64, k=32)
    path = cached_targets(fields, build, tmp_path, verify, suffix=".pt", log=quiet)
    assert cached_targets(fields, build, tmp_path, verify, suffix=".pt", log=quiet) == path and len(built) == 1
    assert path.name.startswith("xvocab-topk-") and path.suffix == ".pt"


def test_epochs_from_the_cache_counted_exactly(tmp_path):
    teacher, tokenizer = build_tiny_model("tiny-llama", seed=1)
    chunks = make_chunks(tokenizer, SAMPLE, seq_len=32, max_chunks=6)  # 192 tokens per epoch
    settings = load_config(None, ["distillation.batch_size=4", "distillation.top_k=8", "branches.kv.enabled=false",
                                  "distillation.token_budget=1000", f"storage.cache_dir={tmp_path}", "compute.precision=fp32"])
    cache = distillation_targets(teacher, chunks, settings, log=quiet, progress=False)
    result = distill(cache, build_tiny_model("tiny-llama", seed=2)[0], tokenizer, chunks, settings, progress=False, log=quiet)
    assert (result.tokens, result.epoch_tokens, result.epochs) == (1000, 192, 6)  # 5 whole passes and 40 tokens of a sixth
    assert result.epochs_trained == pytest.approx(1000 / 192, abs=1e-12)
    per_epoch = {}
    for row in result.curve: per_epoch[row["epoch"]] = row["tokens"]
    assert [per_epoch[e] for e in range(5)] == [192 * (e + 1) for e in range(5)]
