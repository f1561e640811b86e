#!/usr/bin/env python
"""How every cell of the benchmark moved between two `results.json` files.

Usage: python scripts/compare_results.py BEFORE.json AFTER.json [--git REV]

With `--git REV`, BEFORE is read from that commit (e.g. `--git 5790d1b benchmarks/results.json AFTER.json` compares
the committed full run of that commit with a new one). Prints markdown: the quality cells (BPB, seconds, training
tokens) side by side with the change, and the training-throughput rows when both runs have them.
"""
import argparse
import json
import subprocess
import sys


def read(path: str, rev: str | None = None) -> dict:
    if rev: return json.loads(subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout)
    with open(path) as f: return json.load(f)


def cells(results: dict) -> dict:
    return {(r["ratio"], r["method"]): r for r in results["quality"]}


def fmt(value, digits=3) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def quality_table(before: dict, after: dict) -> list[str]:
    old, new = cells(before), cells(after)
    lines = ["| ratio | method | BPB before | BPB after | change | seconds before | seconds after | note after |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for key in list(dict.fromkeys([*old, *new])):
        a, b = old.get(key, {}), new.get(key, {})
        change = b["bpb"] - a["bpb"] if a.get("bpb") is not None and b.get("bpb") is not None else None
        lines.append(f"| {key[0]:g}x | {key[1]} | {fmt(a.get('bpb'))} | {fmt(b.get('bpb'))} | "
                     f"{'' if change is None else f'{change:+.3f}'} | {fmt(a.get('seconds'), 1)} | {fmt(b.get('seconds'), 1)} | "
                     f"{b.get('note') or ''} |")
    return lines


def students(results: dict) -> dict:
    "Training-throughput rows by student; the older format (`speed.distill`, one student) read as the same fields."
    speed = results.get("speed", {})
    if "training" in speed: return speed["training"]["students"]
    old = speed.get("distill")
    return {f"{old['ratio']:g}x": dict(live_tokens_per_second=old["teacher_in_loop_tokens_per_second"],
                                       cached_tokens_per_second=old["cached_tokens_per_second"])} if old else {}


def throughput_table(before: dict, after: dict) -> list[str]:
    old, new = students(before), students(after)
    if not (old or new): return []
    keys = ("live_tokens_per_second", "cached_tokens_per_second", "cached_ceiling", "cached_fraction")
    lines = ["", "| student | " + " | ".join(f"{k} before | {k} after" for k in keys) + " |", "|---|" + "---:|" * (2 * len(keys))]
    for name in dict.fromkeys([*old, *new]):
        a, b = old.get(name, {}), new.get(name, {})
        lines.append(f"| {name} | " + " | ".join(f"{fmt(a.get(k), 2 if k.endswith('fraction') else 0)} | "
                                                 f"{fmt(b.get(k), 2 if k.endswith('fraction') else 0)}" for k in keys) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--git", default=None, help="read BEFORE from this commit")
    args = parser.parse_args(argv)
    try: before, after = read(args.before, args.git), read(args.after)
    except (OSError, ValueError, subprocess.CalledProcessError) as error:
        print(f"compare_results: error: {error}", file=sys.stderr)
        return 2
    print(f"before: {before.get('seconds', 0) / 60:.1f} min, after: {after.get('seconds', 0) / 60:.1f} min "
          f"({len(after.get('sittings', [])) or 1} sitting(s))\n")
    print("\n".join(quality_table(before, after) + throughput_table(before, after)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
