"The committed 100x and 1000x students reload, with and without remote code, and match their summary.json."
import json
from pathlib import Path

import pytest
import torch

STUDENTS = Path(__file__).resolve().parents[1] / "benchmarks" / "students"
TEACHER_PARAMS = 134_515_008


@pytest.mark.parametrize("ratio", [100, 1000])
def test_committed_student(ratio):
    from transformers import AutoModelForCausalLM

    from hypercompress.checkpoint import load
    from hypercompress.models import count_parameters
    folder = STUDENTS / f"{ratio}x"
    if not folder.is_dir(): pytest.skip(f"{folder} not committed")
    summary = json.loads((folder / "summary.json").read_text())
    model, tokenizer = load(folder)
    remote = AutoModelForCausalLM.from_pretrained(folder / "hf", trust_remote_code=True)
    assert count_parameters(model) == count_parameters(remote) == summary["student_params"] <= TEACHER_PARAMS // ratio
    assert summary["teacher_params"] == TEACHER_PARAMS and summary["retained_target"] == 0.75
    assert summary["retained_met"] == (summary["retained"] >= 0.75)
    ids = torch.tensor([tokenizer("To be, or not to be")["input_ids"]])
    with torch.no_grad(): assert torch.equal(model(ids).logits, remote.eval()(ids).logits)


@pytest.mark.parametrize("ratio", [100, 1000])
def test_committed_student_bpb(ratio):
    "The BPB in summary.json, measured again on the validation split (when the corpus is on this machine)."
    from hypercompress.checkpoint import load
    from hypercompress.data import DataError, load_text, split_text
    from hypercompress.evaluate import evaluate_bpb
    folder = STUDENTS / f"{ratio}x"
    if not folder.is_dir(): pytest.skip(f"{folder} not committed")
    try: text = load_text("tinyshakespeare")
    except DataError: pytest.skip("tinyshakespeare is not available offline here")
    summary = json.loads((folder / "summary.json").read_text())
    model, tokenizer = load(folder)
    bpb = evaluate_bpb(model, tokenizer, split_text(text).val, seq_len=512)["bpb"]
    assert bpb == pytest.approx(summary["student_bpb"], abs=1e-4)


STOCK_TRANSFORMERS = '''
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


@pytest.mark.parametrize("ratio", [100, 1000])
def test_committed_student_is_not_loadable_as_a_plain_llama(ratio):
    "Stock from_pretrained without remote code refuses the int8 folder (instead of random weights); once hypercompress is imported it reads it."
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    from hypercompress.checkpoint import load
    folder = STUDENTS / f"{ratio}x" / "hf"
    if not folder.is_dir(): pytest.skip(f"{folder} not committed")
    stock = subprocess.run([sys.executable, "-c", STOCK_TRANSFORMERS, str(folder)], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
    last = stock.stdout.strip().splitlines()[-1]  # after transformers' own prompt, which stdin=/dev/null answers
    assert last.startswith("refused:") and "trust_remote_code=True" in last, stock.stdout
    model, tokenizer = load(folder)
    ids = torch.tensor([tokenizer("To be, or not to be")["input_ids"]])
    with torch.no_grad(): assert torch.equal(AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits, model(ids).logits)
