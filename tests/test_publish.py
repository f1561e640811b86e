"""A run's output folder as users meet it: runs killed while publishing, two runs at once, a rerun with other settings,
bad places to write, and a run whose training diverges. Tiny models, real processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

COMMAND = [shutil.which("hypercompress")] if shutil.which("hypercompress") else [
    sys.executable, "-c", "import sys; from hypercompress.cli import main; main(sys.argv[1:])"]
SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 60
FAST = ["distillation.token_budget=1024", "distillation.batch_size=4", "finetune.max_tokens=512",
        "finetune.eval_every_tokens=256", "evaluation.seq_len=64"]

# The CLI in a process that SIGKILLs itself: MODE 'replace' at its K-th os.replace into OUT; MODE 'staging' as soon as it
# moves a staging folder (or anything in one) anywhere, i.e. after the checkpoint is saved and before it is published.
KILLED = '''
import os, signal, sys
mode, out, k = sys.argv[1], os.path.abspath(sys.argv[2]), int(sys.argv[3])
calls, real = [0], {"replace": os.replace, "rename": os.rename}
def patched(name):
    def move(src, dst, *args, **kwargs):
        hit = os.path.abspath(dst).startswith(out) if mode == "replace" and name == "replace" else \\
              mode == "staging" and "staging" in str(src)
        if hit:
            calls[0] += 1
            if calls[0] == k: os.kill(os.getpid(), signal.SIGKILL)
        return real[name](src, dst, *args, **kwargs)
    return move
os.replace, os.rename = patched("replace"), patched("rename")
from hypercompress.cli import main
main(sys.argv[4:])
'''

# The CLI with distillation slowed down by SECONDS: a run that is still going when another one starts.
SLOW = '''
import sys, time
import hypercompress.distill as distill
real = distill.distill
def slow(*args, **kwargs):
    time.sleep(float(sys.argv[1]))
    return real(*args, **kwargs)
distill.distill = slow
from hypercompress.cli import main
main(sys.argv[2:])
'''


def hypercompress(*args, cwd):
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL)


def run_args(out, corpus, ratio=2, extra=()):
    sets = [a for s in FAST + list(extra) for a in ("--set", s)]
    return ["run", "--teacher-model", "tiny-llama", "--distill-data", str(corpus), "--ratio", str(ratio), "--seq-len", "32",
            "--output-dir", str(out), *sets, "--json"]


def run_here(out, corpus, ratio=2, extra=(), log=None, teacher="tiny-llama"):
    "The pipeline in this process (about a second on tiny-llama)."
    from hypercompress.pipeline import run_pipeline
    return run_pipeline(None, [f"model.teacher={teacher}", f"data.distill={corpus}", f"targets.compression_ratio={ratio}",
                               "data.seq_len=32", f"storage.checkpoint_dir={out}", *FAST, *extra], log=log or (lambda message: None))


def one_line(result):
    "The error is one line, the last on stderr (progress bars may come before it), and no traceback."
    lines = [line.rsplit("\r", 1)[-1] for line in result.stderr.strip().splitlines()]
    errors = [line for line in lines if line.startswith("hypercompress")]
    return len(errors) == 1 and lines[-1] == errors[0] and " error: " in errors[0] and "Traceback" not in result.stderr


def result(out):
    "Parameters of the model `load(out)` gives, of the model in its .pt, and in its summary.json: one result agrees."
    from hypercompress.checkpoint import load, load_checkpoint
    from hypercompress.models import count_parameters
    return (count_parameters(load(out)[0]), count_parameters(load_checkpoint(out / "hypercompress.pt")[0]),
            json.loads((out / "summary.json").read_text())["student_params"])


def leftovers(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if ".staging" in p.name or p.name.startswith("."))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(SAMPLE)
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory, corpus):
    "A folder holding a good result (ratio 2), published as a version."
    out = tmp_path_factory.mktemp("good") / "out"
    run_here(out, corpus, extra=[f"logging.log_dir={out.parent}/logs"])
    return out


def copy_of(good, tmp_path, layout):
    "The good result in a folder of its own: as versions behind a pointer, or as files at the top (as earlier versions wrote it)."
    out = tmp_path / "out"
    if layout == "versions": shutil.copytree(good, out, symlinks=True)
    else:
        shutil.copytree(good, out)  # links followed: real files at the top
        for name in ("current", "versions"): shutil.rmtree(out / name, ignore_errors=True)
    return out


# k: the os.replace call into the folder the run is killed at (with files at the top: the pointer to them, then the link
# replacing each file, then the pointer to the new run)
@pytest.mark.parametrize("layout, k", [("versions", 1), ("earlier", 1), ("earlier", 2), ("earlier", 4), ("earlier", 7)])
def test_killed_while_publishing_leaves_the_old_result_or_the_new_one(good, corpus, tmp_path, layout, k):
    out = copy_of(good, tmp_path, layout)
    old = result(out)
    killed = subprocess.run([sys.executable, "-c", KILLED, "replace", str(out), str(k), *run_args(out, corpus, ratio=3)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert killed.returncode in (-signal.SIGKILL, 0), killed.stderr[-3000:]
    after = result(out)
    assert len(set(after)) == 1, f"load gives {after[0]:,} parameters, the .pt {after[1]:,}, summary.json {after[2]:,}"
    if killed.returncode == 0: assert after != old  # not killed: the run finished and published
    new = run_here(out, corpus, ratio=3, extra=[f"logging.log_dir={tmp_path}/logs"])  # and the next run publishes cleanly
    assert result(out) == (new["student_params"],) * 3 and new["student_params"] != old[0]
    assert leftovers(out) == []


def test_killed_before_publishing_leaves_a_staging_folder_the_next_run_removes(good, corpus, tmp_path):
    out = copy_of(good, tmp_path, "versions")
    old = result(out)
    killed = subprocess.run([sys.executable, "-c", KILLED, "staging", str(out), "1", *run_args(out, corpus, ratio=3)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert result(out) == old  # the saved checkpoint never became the result
    assert [p for p in leftovers(tmp_path) if "staging" in p], "the killed run left its staging folder"
    lines = []
    new = run_here(out, corpus, ratio=3, extra=[f"logging.log_dir={tmp_path}/logs"], log=lines.append)
    assert any(line.startswith("removed ") and ".staging-" in line and "interrupted" in line for line in lines), lines
    assert result(out) == (new["student_params"],) * 3
    assert [p for p in leftovers(tmp_path) if "staging" in p] == []


def test_second_run_into_the_same_folder_is_refused_at_start(corpus, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-c", SLOW, "8", *run_args(out, corpus, ratio=2)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in first.stdout:  # wait until the first run is training
            if "Distilling knowledge" in line: break
        started = time.perf_counter()
        second = hypercompress(*run_args(out, corpus, ratio=3), cwd=tmp_path)
        assert second.returncode == 2 and one_line(second), (second.stdout[-2000:], second.stderr[-2000:])
        assert f"{out} is being written by another run (pid {first.pid}" in second.stderr
        assert "Baseline analysis" not in second.stdout and time.perf_counter() - started < 60
        stdout, stderr = first.communicate(timeout=300)
    finally: first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert result(out)[0] == json.loads(stdout.strip().splitlines()[-1])["student_params"]  # the first run's result


def test_rerun_without_hf_folder_serves_the_new_result(good, corpus, tmp_path):
    "With save_pretrained off, no earlier hf/ answers for the new run: check, eval, --teacher-checkpoint all see the new model."
    out = copy_of(good, tmp_path, "versions")
    new = run_here(out, corpus, ratio=3, extra=["storage.save_pretrained=false", f"logging.log_dir={tmp_path}/logs"])
    checked = hypercompress("check", "--checkpoint", str(out), "--data", str(corpus), "--seq-len", "64", "--max-new-tokens",
                            "4", "--json", cwd=tmp_path)
    evaluated = hypercompress("eval", "--model", str(out), "--data", str(corpus), "--seq-len", "64", "--json", cwd=tmp_path)
    for done in (checked, evaluated):
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.strip().splitlines()[-1])["params"] == new["student_params"]
    assert not (out / "hf").exists() and (out / "tokenizer").is_dir()  # no link to the earlier run's hf/
    again = run_here(tmp_path / "again", corpus, ratio=1.5, extra=[f"logging.log_dir={tmp_path}/logs"], teacher=str(out))
    assert again["teacher_params"] == new["student_params"]


class Disk(namedtuple("Disk", "total used free")): pass


@pytest.mark.parametrize("case, expected", [("a file", "it is a file, not a folder"), ("under a file", "is a file, not a folder"),
                                            ("not writable", "is not writable"), ("full", "bytes free"),
                                            ("experiment with a slash", "experiment must be a plain file name")])
def test_bad_output_is_refused_before_training(corpus, tmp_path, monkeypatch, case, expected):
    import shutil as shutil_module
    (tmp_path / "file").write_text("not a folder")
    out, extra = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "out"}.get(case, tmp_path / "out"), []
    if case == "not writable": monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    if case == "full": monkeypatch.setattr(shutil_module, "disk_usage", lambda path: Disk(10**9, 10**9 - 1000, 1000))
    if case == "experiment with a slash": extra = ["logging.experiment=../../escape"]
    lines = []
    with pytest.raises(ValueError, match=expected):
        run_here(out, corpus, extra=extra + [f"logging.log_dir={tmp_path}/logs"], log=lines.append)
    assert not any("Distilling" in line for line in lines), lines
    assert (tmp_path / "file").read_text() == "not a folder" and not (tmp_path / "escape").exists()


def test_output_that_is_a_file_is_one_line(corpus, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    done = hypercompress(*run_args(tmp_path / "file" / "out", corpus), cwd=tmp_path)
    assert done.returncode == 2 and one_line(done) and f"{tmp_path / 'file'} is a file" in done.stderr, done.stderr[-2000:]


def test_divergence_is_one_line_and_keeps_the_last_good_weights_aside(good, corpus, tmp_path):
    from hypercompress.checkpoint import load
    out = copy_of(good, tmp_path, "versions")
    old = result(out)
    done = hypercompress(*run_args(out, corpus, ratio=3, extra=["distillation.learning_rate=1e6"]), cwd=tmp_path)
    assert done.returncode == 2 and one_line(done), done.stderr[-3000:]
    assert "distillation diverged" in done.stderr and "The last good weights are in" in done.stderr
    (aside,) = out.glob("diverged-*")
    assert str(aside) in done.stderr and "diverged" in (aside / "DIVERGED.txt").read_text()
    load(aside)  # loads: finite weights of the right shapes (loading refuses anything else)
    assert result(out) == old  # never published as the result
