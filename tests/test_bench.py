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


def test_compare_results_shows_every_cell_and_its_change(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("compare_results", Path(__file__).parent.parent / "scripts" / "compare_results.py")
    compare = importlib.util.module_from_spec(spec); spec.loader.exec_module(compare)
    row = lambda ratio, method, bpb: dict(ratio=ratio, method=method, bpb=bpb, seconds=1.0, note=None)
    before = dict(seconds=60, quality=[row(2, "hypercompress", 2.5), row(2, "Wanda", 2.0)],
                  speed=dict(distill=dict(ratio=1.33, teacher_in_loop_tokens_per_second=109.0, cached_tokens_per_second=175.0)))
    after = dict(seconds=120, sittings=["a", "b"], quality=[row(2, "hypercompress", 2.25), row(4, "hypercompress", 3.0)],
                 speed=dict(training=dict(students={"1.33x": dict(live_tokens_per_second=300.0, cached_tokens_per_second=450.0,
                                                                  cached_ceiling=900.0, cached_fraction=0.5)})))
    for name, results in (("before.json", before), ("after.json", after)): (tmp_path / name).write_text(json.dumps(results))
    assert compare.main([str(tmp_path / "before.json"), str(tmp_path / "after.json")]) == 0
    out = capsys.readouterr().out
    assert "| 2x | hypercompress | 2.500 | 2.250 | -0.250 |" in out and "| 2x | Wanda | 2.000 |  |  |" in out
    assert "| 4x | hypercompress |  | 3.000 |  |" in out and "(2 sitting(s))" in out
    assert "| 1.33x | 109 | 300 | 175 | 450 |  | 900 |  | 0.50 |" in out
    assert compare.main([str(tmp_path / "missing.json"), str(tmp_path / "after.json")]) == 2
