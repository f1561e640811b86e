"""What cannot be scored, or is not what was asked for, is refused: one line on stderr naming the file, flag or value,
exit status 2, and no number printed. NaN weights, folders that lost their recipe, stock loading without remote code,
bad eval/check/search arguments, data too small to measure, broken configs and files. Tiny models, real processes."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

COMMAND = [shutil.which("hypercompress")] if shutil.which("hypercompress") else [
    sys.executable, "-c", "import sys; from hypercompress.cli import main; main(sys.argv[1:])"]
SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 60
FAST = ["distillation.token_budget=1024", "distillation.batch_size=4", "finetune.max_tokens=512",
        "finetune.eval_every_tokens=256", "evaluation.seq_len=64"]


def tiny_run(corpus, out):
    "The overrides of a tiny-llama run at 2x on `corpus` into `out`."
    return ["model.teacher=tiny-llama", f"data.distill={corpus}", "targets.compression_ratio=2", "data.seq_len=32",
            f"storage.checkpoint_dir={out}"]


IDS = torch.tensor([list(b"To be, or not to be, that is the question")])

# Stock transformers in a process that cannot import hypercompress.
STOCK = '''
import sys, builtins
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] == "hypercompress": raise ImportError("hypercompress must not be needed")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
from transformers import AutoModelForCausalLM
try: AutoModelForCausalLM.from_pretrained(sys.argv[1])
except ValueError as error: print("\\nrefused:", str(error).splitlines()[-1])
else: print("\\nloaded")
'''


def hypercompress(*args, cwd=None):
    return subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL)


def refused(result, *expected):
    "Exit 2, the error one line (the last on stderr, after any progress bars), naming what is expected; nothing on stdout parses as a number."
    lines = [line.rsplit("\r", 1)[-1] for line in result.stderr.strip().splitlines()]
    errors = [line for line in lines if line.startswith("hypercompress")]
    assert result.returncode == 2, (result.returncode, result.stdout[-1500:], result.stderr[-3000:])
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected: assert text in errors[0], errors[0]
    assert "NaN" not in result.stdout and '"bpb"' not in result.stdout
    return errors[0]


def logits(model):
    with torch.no_grad(): return model(IDS).logits


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(SAMPLE)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory, corpus):
    "A run's output folder: a compressed tiny-llama (factorized linears, latent K/V) with its summary."
    from hypercompress.pipeline import run_pipeline
    out = tmp_path_factory.mktemp("saved") / "out"
    run_pipeline(None, [*tiny_run(corpus, out), *FAST, f"logging.log_dir={out.parent}/logs"], log=lambda message: None)
    return out


def materialized(saved, tmp_path):
    "A copy of the output folder with real files at the top (safe to damage one of them)."
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    for name in ("current", "versions"): shutil.rmtree(copy / name, ignore_errors=True)
    return copy


def test_nan_weights_are_refused_everywhere(saved, corpus, tmp_path):
    from hypercompress.checkpoint import load, save_checkpoint
    model, tokenizer = load(saved)
    with torch.no_grad(): model.model.norm.weight[0] = float("nan")
    save_checkpoint(model, tokenizer, tmp_path / "nan")
    refused(hypercompress("eval", "--model", tmp_path / "nan", "--data", corpus, "--seq-len", "64", "--json"),
            "model.norm.weight holds 1 NaN or infinite values")
    refused(hypercompress("check", "--checkpoint", tmp_path / "nan", "--data", corpus, "--seq-len", "64"), "NaN or infinite")
    refused(hypercompress("run", "--teacher-model", "tiny-llama", "--teacher-checkpoint", tmp_path / "nan", "--distill-data",
                          corpus, "--ratio", "2", "--seq-len", "32", "--output-dir", tmp_path / "next",
                          *[a for s in FAST for a in ("--set", s)]), "NaN or infinite")
    assert not (tmp_path / "next").exists()


@pytest.mark.parametrize("older", [False, True], ids=["own-model-type", "base-model-type"])
def test_folder_that_lost_its_recipe_is_refused(saved, corpus, tmp_path, older):
    "A compressed hf/ whose config.json lost its `hypercompress` entry is never scored as a randomly initialised Llama."
    folder = tmp_path / "hf"
    shutil.copytree(saved / "hf", folder)
    config = json.loads((folder / "config.json").read_text())
    del config["hypercompress"]
    if older: config["model_type"] = config.pop("base_model_type", config["model_type"])  # as folders were written before
    (folder / "config.json").write_text(json.dumps(config))
    expected = ("do not fit", "unexpected", "lost its `hypercompress` entry") if older else ("without its recipe",)
    refused(hypercompress("eval", "--model", folder, "--data", corpus, "--seq-len", "64", "--json"), *expected)


def test_stock_from_pretrained_refuses_a_compressed_folder(saved):
    "Without remote code, transformers' own trust_remote_code message, not random weights; with hypercompress imported, the same model."
    from transformers import AutoModelForCausalLM

    from hypercompress.checkpoint import load
    stock = subprocess.run([sys.executable, "-c", STOCK, str(saved / "hf")], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
    last = stock.stdout.strip().splitlines()[-1]
    assert last.startswith("refused:") and "trust_remote_code=True" in last, stock.stdout[-2000:] + stock.stderr[-2000:]
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(saved / "hf")), logits(load(saved)[0]), atol=0, rtol=0)


@pytest.mark.parametrize("args, expected", [
    (["eval", "--seq-len", "0"], "argument --seq-len: must be at least 1, got 0"),
    (["eval", "--seq-len", "-5"], "argument --seq-len: must be at least 1, got -5"),
    (["eval", "--seq-len", "1e9"], "argument --seq-len: expected an integer, got '1e9'"),
    (["eval", "--seq-len", "5000"], "seq_len=5000 is longer than the 1,024 positions the model's config allows"),
    (["eval", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["eval", "--max-tokens", "-1"], "argument --max-tokens: must be at least 1, got -1"),
    (["check", "--seq-len", "0"], "argument --seq-len: must be at least 1, got 0"),
    (["check", "--seq-len", "5000"], "seq_len=5000 is longer than the 1,024 positions"),
    (["check", "--prompt", ""], "--prompt is empty"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_eval_and_check_arguments(corpus, args, expected):
    command, *flags = args
    model = ["--model", "tiny-llama"] if command == "eval" else ["--checkpoint", "tiny-llama"]
    refused(hypercompress(command, *model, "--data", corpus, *flags, "--json"), expected)


def test_data_too_small_to_measure_is_marked(tmp_path):
    "A 200-character corpus: the BPB is reported, with how much it covers, and never 'target met'."
    from hypercompress.pipeline import run_pipeline, summary_lines
    corpus = tmp_path / "small.txt"
    corpus.write_text(("First Citizen: Before we proceed any further, hear me speak. " * 4)[:200])
    lines = []
    summary = run_pipeline(None, [*tiny_run(corpus, tmp_path / "out"), *FAST, f"logging.log_dir={tmp_path}/logs"], log=lines.append)
    assert (summary["eval_tokens"], summary["eval_bytes"], summary["eval_extent"]) == (20, 20, "all validation tokens")
    assert summary["too_small_to_measure"] is True and summary["retained_met"] is None and summary["retained"] is not None
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["eval_bytes"] == 20
    assert any("20 bytes, fewer than evaluation.min_eval_bytes=4,000" in line for line in lines), lines
    printed = "\n".join(summary_lines(summary))
    assert "too small to measure" in printed and "target 0.75" not in printed
    capped = run_pipeline(None, [*tiny_run(corpus, tmp_path / "capped"), *FAST, "evaluation.max_eval_tokens=8",
                                 f"logging.log_dir={tmp_path}/logs"], log=lambda message: None)
    assert (capped["eval_tokens"], capped["eval_bytes"], capped["eval_extent"]) == (8, 8, "first 8 validation tokens")


@pytest.mark.parametrize("command", ["eval", "run"])
def test_empty_data_file_is_named(tmp_path, command):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = (["eval", "--model", "tiny-llama", "--data", empty] if command == "eval" else
            ["run", "--teacher-model", "tiny-llama", "--distill-data", empty, "--output-dir", tmp_path / "out"])
    refused(hypercompress(*args), str(empty))
    assert not (tmp_path / "out").exists()


def test_corrupt_summary_beside_good_weights_is_named(saved, corpus, tmp_path):
    copy = materialized(saved, tmp_path)
    (copy / "summary.json").write_text("")
    refused(hypercompress("eval", "--model", copy, "--data", corpus, "--seq-len", "64"), f"{copy / 'summary.json'} is corrupt")


def test_pickle_in_a_plain_folder_is_refused(corpus, tmp_path):
    from hypercompress.models import build_tiny_model

    class Payload:
        def __reduce__(self): return (print, ("this would run on load",))
    model, tokenizer = build_tiny_model("tiny-llama")
    model.config.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    torch.save({"model.norm.weight": Payload()}, tmp_path / "plain" / "pytorch_model.bin")
    done = hypercompress("eval", "--model", tmp_path / "plain", "--data", corpus)
    refused(done, "refused to load its weights", "pickled")
    assert "this would run on load" not in done.stdout


@pytest.mark.parametrize("flags, expected", [
    (["--storage", "notadb://somewhere"], "storage notadb://somewhere: cannot open it"),
    (["--storage", "sqlite:///no/such/folder/study.db"], "the folder no/such/folder does not exist"),
    (["--storage", "postgresql://user@localhost/studies"], "its database driver is not installed"),
    (["--buckets", "abc,,"], "--buckets 'abc,,': expected comma-separated numbers"),
])
def test_search_arguments_fail_before_any_trial(corpus, tmp_path, flags, expected):
    done = hypercompress("search", "--teacher-model", "tiny-llama", "--distill-data", corpus, "--trials", "1", "--study", "s",
                         "--trial-tokens", "64", "--out", tmp_path / "sweeps", *flags, cwd=tmp_path)
    refused(done, expected)
    assert "trial 0" not in done.stdout and not (tmp_path / "sweeps" / "s" / "study.db").exists()


@pytest.mark.parametrize("text, expected", [
    ("targets:\n  compression_ratio: 2\n  retained_accuracy: 0.5\n  compression_ratio: 50\n",
     "duplicate key 'compression_ratio' on lines 2 and 4"),
    ("# nothing set yet\n", "empty configuration"),
])
def test_config_file_mistakes_are_one_line(tmp_path, text, expected):
    (tmp_path / "c.yaml").write_text(text)
    refused(hypercompress("run", "--config", tmp_path / "c.yaml", "--teacher-model", "tiny-llama", "--output-dir", tmp_path / "out"),
            expected, str(tmp_path / "c.yaml"))
    assert not (tmp_path / "out").exists()
