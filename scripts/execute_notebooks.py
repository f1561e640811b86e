#!/usr/bin/env python
"""Execute notebooks in place, `slow` cells included, so their outputs (real-teacher measurements, plots) are saved.

Usage: python scripts/execute_notebooks.py nbs/03_evaluate.ipynb [more notebooks]
Cells flagged `#| eval: false` are skipped, as nbdev does. Run `nbdev_clean` afterwards (this script does it).
"""
import subprocess
import sys
import time
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory


def _skip(cell):
    "nbdev's rule: skip non-code cells and cells flagged `#| eval: false`."
    if cell.cell_type != "code": return True
    return any(line.replace(" ", "").lower().startswith("#|eval:false") for line in cell.source.splitlines())


def execute(path: Path):
    nb = read_nb(path)
    start = time.time()
    with working_directory(path.parent):
        shell = CaptureShell(path)
        shell.run_all(nb, exc_stop=True, preproc=_skip)
    write_nb(nb, path)
    print(f"{path}: executed in {time.time() - start:.0f}s")


if __name__ == "__main__":
    paths = [Path(p).resolve() for p in sys.argv[1:]]
    for p in paths: execute(p)
    for p in paths: subprocess.run(["nbdev_clean", "--fname", str(p)], check=True)
