#!/usr/bin/env python
"""Compress a Hugging Face causal LM end to end: a thin wrapper over `hypercompress run` (same flags).

    python scripts/run_hf_pipeline.py --config configs/10x.yaml --teacher-model smollm2-135m --distill-data tinyshakespeare
    accelerate launch --multi_gpu --num_processes 2 scripts/run_hf_pipeline.py --config ...   # data-parallel distillation

`python scripts/run_hf_pipeline.py --help` lists the flags (--config, --teacher-model, --student-model, --distill-data,
--finetune-data, --seq-len, --stride, --max-chunks, --batch-size, --ratio, --teacher-checkpoint, --output-dir, --set).
On a machine without GPUs, `accelerate launch --multi_gpu --num_processes N` starts N CPU processes (gloo backend).
"""
import sys

from hypercompress.cli import main

if __name__ == "__main__":
    main(["run", *sys.argv[1:]])
