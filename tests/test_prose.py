"""Every number in notebook prose comes from a saved output.

A decimal number (two or more decimals) in a markdown cell must appear, rounded as quoted, in a saved output of the
same notebook or in a committed benchmark result (`benchmarks/**/*.json`), or be the difference or ratio of two
numbers the same cell quotes (e.g. "2.7302 → 2.5705 (−0.160)"). Goals (a number after ≤, ≥, <, >) and arXiv ids are
not results. Integers and one-decimal numbers are not checked: counts and sizes are too often restated in words.
"""
import itertools
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith("_"))
QUOTED = re.compile(r"(?<![\w.:≤≥<>])(?<![≤≥<>] )\d+\.\d{2,}(?![\w.])")  # a result: not after ≤/≥/</> (a goal)
NUMBER = re.compile(r"\d[\d,]*\.\d+(?:e-?\d+)?|\d+e-?\d+|\d[\d,]*")


def numbers(text: str) -> set[float]:
    found = set()
    for m in NUMBER.finditer(text):
        try: found.add(float(m.group().replace(",", "")))
        except ValueError: pass
    return found


def saved_outputs(nb: dict) -> str:
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream": parts.append("".join(out["text"]))
            for kind, value in out.get("data", {}).items():
                if kind.startswith("text/"): parts.append("".join(value))
    return "\n".join(parts)


def prose(cell: dict) -> str:
    "A markdown cell without its maths and arXiv ids."
    return re.sub(r"arXiv:\d+\.\d+", "", re.sub(r"\$[^$]*\$", "", "".join(cell["source"])))


def unaccounted(nb: dict, results: set[float]) -> list[str]:
    "Numbers in the prose of `nb` that no saved output (nor `results`) shows, each with its context."
    shown = numbers(saved_outputs(nb)) | results
    missing = []
    for cell in (c for c in nb["cells"] if c["cell_type"] == "markdown"):
        text = prose(cell)
        quoted = sorted(numbers(text) & shown)  # what the cell quotes that is itself a saved result
        for m in QUOTED.finditer(text):
            digits, value = len(m.group().split(".")[1]), float(m.group())
            if any(abs(round(v, digits) - value) < 1e-9 for v in shown): continue
            unit = 10 ** -digits * 1.01  # a difference of two rounded numbers may differ by one in its last digit
            derived = (abs(a - b) for a, b in itertools.combinations(quoted, 2))
            ratios = (a / b for a, b in itertools.permutations(quoted, 2) if b)
            if any(abs(x - value) <= unit for x in itertools.chain(derived, ratios)): continue
            missing.append(f"{m.group()} in ...{text[max(0, m.start() - 60):m.end() + 20]!r}")
    return missing


def benchmark_results() -> set[float]:
    return set().union(*(numbers(p.read_text()) for p in (ROOT / "benchmarks").glob("**/*.json")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prose_numbers_come_from_saved_outputs(path):
    missing = unaccounted(json.loads(path.read_text()), benchmark_results())
    assert not missing, f"{path.name}: numbers in prose that no saved output shows:\n" + "\n".join(missing)


def test_the_check_can_fail():
    def nb(markdown, output):
        return {"cells": [{"cell_type": "markdown", "source": [markdown]},
                          {"cell_type": "code", "source": [], "outputs": [{"output_type": "stream", "text": [output]}]}]}
    assert unaccounted(nb("BPB 1.6536 on the split.", "val BPB 1.65363"), set()) == []      # rounded as quoted
    assert unaccounted(nb("from 2.7302 to 2.5705 (−0.160)", "2.7302 2.5705"), set()) == []   # a difference
    assert unaccounted(nb("the goal ≤ 2.35 is missed", "2.57"), set()) == []                 # a goal, not a result
    assert unaccounted(nb("it reached 2.35 BPB", "2.57"), set()) != []                       # not measured
    assert unaccounted(nb("from 2.7302 to 2.5705 (−0.170)", "2.7302 2.5705"), set()) != []   # a wrong difference
