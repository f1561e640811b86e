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
