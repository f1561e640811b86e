"The `hypercompress` console script end to end, as a user runs it: real processes, real files."
import json
import shutil
import subprocess
import sys

import pytest


# The installed console script, as a user runs it (falls back to its entry point when not on PATH).
COMMAND = [shutil.which("hypercompress")] if shutil.which("hypercompress") else [
    sys.executable, "-c", "import sys; from hypercompress.cli import main; main(sys.argv[1:])"]


def hypercompress(*args, cwd=None):
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40)
    return path


def test_eval_json(corpus):
    result = hypercompress("eval", "--model", "tiny-llama", "--data", str(corpus), "--seq-len", "64", "--json")
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(numbers) == {"bpb", "ppl", "tokens", "bytes", "params", "seconds"}
    val_bytes = len(corpus.read_text()) - int(len(corpus.read_text()) * 0.9)
    assert numbers["bytes"] == val_bytes  # the last 10% of the characters (ASCII here), nothing else
    assert numbers["tokens"] == val_bytes  # byte-level tokenizer: one token per byte
    assert 0 < numbers["bpb"] < 20


def test_eval_split_all_counts_every_byte(corpus):
    result = hypercompress("eval", "--model", "tiny-gpt2", "--data", str(corpus), "--split", "all", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["bytes"] == len(corpus.read_bytes())


def test_data_get_copies_corpus(corpus, tmp_path):
    result = hypercompress("data", "get", "tinyshakespeare", "--from", str(corpus), "--dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "tinyshakespeare.txt").read_text() == corpus.read_text()


@pytest.mark.parametrize("args, expected", [
    (["eval", "--model", "tiny-llama", "--data", "no/such/file.txt"], "no/such/file.txt"),
    (["eval", "--model", "no/such/model_dir", "--data", "tinyshakespeare"], "no/such/model_dir"),
    (["data", "get", "wikitext103"], "unknown corpus"),
    (["data", "get", "tinyshakespeare", "--from", "missing.txt"], "missing.txt"),
    (["targets", "--teacher-model", "tiny-llama", "--vocab", "bpe:x"], "expected 'bytes' or 'bpe:N'"),
    (["targets", "--teacher-model", "tiny-llama", "--vocab", "bytes", "--data", "no/such/file.txt"], "no/such/file.txt"),
])
def test_bad_input_is_one_clear_line(args, expected, tmp_path):
    result = hypercompress(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_data_get_failure_keeps_existing_file(corpus, tmp_path):
    dest = tmp_path / "data"
    assert hypercompress("data", "get", "tinyshakespeare", "--from", str(corpus), "--dir", str(dest)).returncode == 0
    before = (dest / "tinyshakespeare.txt").read_text()
    assert hypercompress("data", "get", "tinyshakespeare", "--from", str(tmp_path / "gone.txt"), "--dir", str(dest)).returncode == 2
    assert (dest / "tinyshakespeare.txt").read_text() == before


@pytest.mark.parametrize("content, expected", [(bytes(range(256)) * 8, "is not UTF-8 text"), (b"", "holds no text")],
                         ids=["binary", "empty"])
def test_data_get_bad_source_keeps_good_file(corpus, tmp_path, content, expected):
    "A binary or empty --from is checked before it replaces anything: the good corpus stays, nothing temporary is left."
    dest = tmp_path / "d"
    assert hypercompress("data", "get", "tinyshakespeare", "--from", str(corpus), "--dir", str(dest)).returncode == 0
    bad = tmp_path / "bin.bin"
    bad.write_bytes(content)
    result = hypercompress("data", "get", "tinyshakespeare", "--from", str(bad), "--dir", str(dest))
    assert result.returncode == 2 and expected in result.stderr and str(bad) in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert (dest / "tinyshakespeare.txt").read_text() == corpus.read_text()
    assert [p.name for p in dest.iterdir()] == ["tinyshakespeare.txt"]


def test_targets_end_to_end(corpus, tmp_path):
    "Exact byte targets of a tiny BPE teacher, scored against it; the second call reads the shared cache."
    from transformers import LlamaConfig, LlamaForCausalLM
    from hypercompress.data import load_text
    from hypercompress.vocab import train_byte_level_bpe
    tokenizer = train_byte_level_bpe(load_text("tinyshakespeare")[:20_000], 300)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "teacher"); tokenizer.save_pretrained(tmp_path / "teacher")
    settings = tmp_path / "targets.yaml"  # a random teacher's marginal beats its own tokenization by far: a wide tolerance
    settings.write_text("data:\n  seq_len: 64\ndistillation:\n  top_k: 16\n  cross_vocab:\n    window: 256\n"
                        "    check_bytes: 500\n    leak_tolerance: 10\nstorage:\n  cache_dir: " + str(tmp_path / "cache") + "\n")
    args = ["targets", "--teacher-model", str(tmp_path / "teacher"), "--data", str(corpus), "--vocab", "bytes", "--config", str(settings)]
    result = hypercompress(*args, "--json")
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert numbers["vocab"] == "bytes:259" and numbers["check_bytes"] >= 500 and numbers["chars"] == int(len(corpus.read_text()) * 0.9)
    assert 0 < numbers["targets_bpb"] <= numbers["full_targets_bpb"] + 1e-3 < 20
    again = hypercompress(*args)
    assert again.returncode == 0, again.stderr
    assert f"teacher {numbers['teacher_bpb_on_targets_slice']:.4f}" in again.stdout
    strict = settings.read_text().replace("leak_tolerance: 10", "leak_tolerance: 0")
    settings.write_text(strict.replace("check_bytes: 500", "check_bytes: 400"))
    refused = hypercompress(*args)  # another check, the same cached targets: the leak check's error, one line
    if numbers["targets_bpb"] < numbers["teacher_bpb_on_targets_slice"]:
        assert refused.returncode == 2 and "they leak information" in refused.stderr and "Traceback" not in refused.stderr
