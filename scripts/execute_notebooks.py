#!/usr/bin/env python
"""Execute notebooks in place, `slow` cells included, so their outputs (real-teacher measurements, plots) are saved.

Usage: python scripts/execute_notebooks.py [--keep-slow [--also TEXT]...] nbs/03_evaluate.ipynb [more notebooks]
Cells flagged `#| eval: false` are skipped, as nbdev does. Run `nbdev_clean` afterwards (this script does it).
--keep-slow skips `slow` cells and keeps their saved outputs (a quick refresh of the other cells' outputs and plots
when the slow measurements have not changed); `--also TEXT` (repeatable) still runs the slow cells whose source contains TEXT.
"""
import subprocess
import sys
import time
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory


def _flags(cell) -> set:
    "The cell's `#|` directives, spaces removed, lower case (`eval:false`, `slow`, ...)."
    return {line.replace(" ", "").lower()[2:] for line in cell.source.splitlines() if line.startswith("#|")}


def _skip(cell, keep_slow=False, also=()):
    "nbdev's rule: skip non-code cells and cells flagged `#| eval: false`; with keep_slow also `#| slow` cells."
    if cell.cell_type != "code": return True
    slow_kept = keep_slow and "slow" in _flags(cell) and not any(text in cell.source for text in also)
    return "eval:false" in _flags(cell) or slow_kept


def execute(path: Path, keep_slow=False, also=()):
    nb = read_nb(path)
    start = time.time()
    with working_directory(path.parent):
        shell = CaptureShell(path)
        shell.run_all(nb, exc_stop=True, preproc=lambda cell: _skip(cell, keep_slow, also))
    write_nb(nb, path)
    print(f"{path}: executed in {time.time() - start:.0f}s")


if __name__ == "__main__":
    args = sys.argv[1:]
    keep_slow = "--keep-slow" in args
    also = [args[i + 1] for i, a in enumerate(args) if a == "--also"]
    paths = [Path(p).resolve() for i, p in enumerate(args)
             if p not in ("--keep-slow", "--also") and not (i and args[i - 1] == "--also")]
    for p in paths: execute(p, keep_slow, also)
    for p in paths: subprocess.run(["nbdev_clean", "--fname", str(p)], check=True)
