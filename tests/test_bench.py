"`hypercompress bench` from the console script: bad input is one clear line and writes nothing."
import shutil
import subprocess

import pytest


def test_bench_bad_input_writes_nothing(tmp_path):
    exe = shutil.which("hypercompress") or pytest.skip("console script not installed")
    out = tmp_path / "results"
    for args, message in [(["--teacher-model", str(tmp_path / "no-such-model")], "no-such-model"),
                          (["--teacher-model", "tiny-llama", "--data", str(tmp_path / "missing.txt")], "missing.txt"),
                          (["--teacher-model", "tiny-llama", "--parts", "7x"], "unknown benchmark part '7x'")]:
        done = subprocess.run([exe, "bench", "--quick", "--out", str(out), *args], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not out.exists()
