"Every notebook in nbs/ runs top to bottom (cells flagged `slow` or `notest` skipped), as `nbdev_test` would."
import os
from pathlib import Path

import pytest
from nbdev.test import test_nb as run_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith("_"))
SLOW = os.environ.get("HYPERCOMPRESS_SLOW") == "1"  # set to also run the cells that use the real teacher


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook(path):
    skip = ["notest"] if SLOW else ["notest", "slow"]
    passed, _ = run_notebook(path, skip_flags=skip, basepath=ROOT)
    assert passed, f"{path.name} failed; run `nbdev_test --path {path.relative_to(ROOT)}` for the traceback"
