"""How the planner's split between the tied embedding/head and the decoder matters at one ratio, before any training.

For each embedding latent dim (`branches.blt.latent_dim`; `auto` = the planner's own water-filled choice) the planner
water-fills the rest of the budget over the decoder matrices, the teacher is factorized to that plan (whitened SVD when
`--whitening`, plain SVD otherwise; the plan's spectra are whitened the same way) and scored on the first
`--eval-tokens` validation tokens. No distillation: this isolates the allocation. The uniform-rank plain SVD of
`hypercompress.bench.svd_at_budget` at the same budget is printed as the reference.

    python scripts/latent_dim_sweep.py --ratio 10 --latent-dims auto 24 48 96 160 224 --whitening both
"""
import argparse
import copy
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-model", default="smollm2-135m")
    parser.add_argument("--data", default="tinyshakespeare")
    parser.add_argument("--ratio", type=float, default=10)
    parser.add_argument("--latent-dims", nargs="+", default=["auto", "24", "48", "96", "160", "224"])
    parser.add_argument("--whitening", choices=["on", "off", "both"], default="both")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    args = parser.parse_args()

    from hypercompress.bench import svd_at_budget
    from hypercompress.branches import calibration_ids
    from hypercompress.config import load_config
    from hypercompress.data import load_text, split_text
    from hypercompress.evaluate import evaluate_bpb
    from hypercompress.models import count_parameters, load_model
    from hypercompress.planner import plan
    from hypercompress.structural import compress_to_plan

    teacher, tokenizer = load_model(args.teacher_model)
    teacher.eval()
    splits = split_text(load_text(args.data), 0.9)
    calibration = calibration_ids(tokenizer, splits.train, n_sequences=16, seq_len=256)  # as `run_pipeline` draws it
    def bpb(model): return evaluate_bpb(model, tokenizer, splits.val, seq_len=512, max_tokens=args.eval_tokens)["bpb"]

    budget = int(count_parameters(teacher) // args.ratio)
    reference, rank = svd_at_budget(teacher, budget)
    print(f"teacher {bpb(teacher):.4f} BPB; plain SVD at uniform rank {rank}: {count_parameters(reference):,} parameters, "
          f"{bpb(reference):.4f} BPB (first {args.eval_tokens:,} validation tokens)")
    del reference
    print("| whitening | latent dim | decoder rank median | decoder rank min | parameters | BPB | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for whitening in ([True, False] if args.whitening == "both" else [args.whitening == "on"]):
        for latent in args.latent_dims:
            overrides = [f"targets.compression_ratio={args.ratio}", f"branches.lra.whitening={str(whitening).lower()}"]
            if latent != "auto": overrides.append(f"branches.blt.latent_dim={int(latent)}")
            start = time.perf_counter()
            chosen = plan(teacher, load_config(None, overrides), calibration=calibration if whitening else None, verbose=False)
            student = copy.deepcopy(teacher)
            compress_to_plan(student, chosen, calibration=calibration if whitening else None)
            print(f"| {'on' if whitening else 'off'} | {chosen.latent_dim}{' (auto)' if latent == 'auto' else ''} | "
                  f"{statistics.median(chosen.ranks.values()):g} | {min(chosen.ranks.values())} | {count_parameters(student):,} | "
                  f"{bpb(student):.4f} | {time.perf_counter() - start:.0f} |", flush=True)
            del student


if __name__ == "__main__":
    main()
