#!/usr/bin/env python
"""Quick look at a compressed model: a thin wrapper over `hypercompress check`.

    python scripts/quick_test.py --checkpoint checkpoints/10x [--data tinyshakespeare] [--prompt "ROMEO:"] [--max-tokens N]

Loads the checkpoint (a run's output folder, its hf/ folder, its .pt file, or any model spec), prints its parameter
count, a greedy sample continuing the prompt, and its BPB on the validation split of the data.
"""
import sys

from hypercompress.cli import main

if __name__ == "__main__":
    main(["check", *sys.argv[1:]])
