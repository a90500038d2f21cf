#!/usr/bin/env python3
"""torch_ops.py — the PyTorch side of bench/bench_ops.c: the same cases, shapes and method.

Inputs are N(0,1) f32 leaves with requires_grad; `warmup` untimed runs, then the median of
`reps` timed runs (time.perf_counter_ns, a monotonic clock).
  fwd      the op under torch.no_grad(); the output is dropped inside the timed region.
  fwd+bwd  the op with a graph, then out.backward(R) with a fixed random output gradient R
           (= backward of sum(out * R)); the leaves' .grad are reset to None inside the
           timed region, so every run allocates and frees the same things.

Prints tab-separated lines for bench/run_cpu_bench.sh:
  torch_version <v> / threads <n> / attention_impl <text> / torch <id> <mode> <median ms>

usage: torch_ops.py [--threads N] [--reps N] [--warmup N] [--only id,id,...]
"""
import argparse
import math
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated case ids")
    args = ap.parse_args()

    # must be set before torch (and its BLAS) start their thread pools
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)

    sdpa = getattr(F, "scaled_dot_product_attention", None)
    if sdpa is not None:
        attn_impl = "torch.nn.functional.scaled_dot_product_attention"

        def attention(q, k, v):
            return sdpa(q, k, v)
    else:
        attn_impl = "explicit softmax(QK^T/sqrt(d))V (torch<2.0 has no scaled_dot_product_attention)"

        def attention(q, k, v):
            s = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
            return torch.matmul(torch.softmax(s, dim=-1), v)

    # id -> (input shapes, forward); ids, shapes and hyper-parameters match bench_ops.c
    cases = [
        ("matmul", [(1024, 1024), (1024, 1024)], lambda a, b: torch.matmul(a, b)),
        ("conv2d_320", [(2, 320, 32, 32), (320, 320, 3, 3), (320,)], lambda x, w, b: F.conv2d(x, w, b, padding=1)),
        ("conv2d_4", [(2, 4, 64, 64), (320, 4, 3, 3), (320,)], lambda x, w, b: F.conv2d(x, w, b, padding=1)),
        ("conv2d_4px", [(8, 256, 4, 4), (128, 256, 3, 3), (128,)], lambda x, w, b: F.conv2d(x, w, b, padding=1)),
        ("group_norm", [(2, 320, 64, 64), (320,), (320,)], lambda x, w, b: F.group_norm(x, 32, w, b, 1e-5)),
        ("attention", [(2, 8, 1024, 40)] * 3, attention),
        ("attention_d16", [(8, 4, 256, 16)] * 3, attention),
        ("attention_x77", [(8, 4, 256, 16), (8, 4, 77, 16), (8, 4, 77, 16)], attention),
        ("gelu", [(8, 256, 256)], lambda x: F.gelu(x)),
        ("silu", [(2, 320, 64, 64)], lambda x: F.silu(x)),
    ]

    print(f"torch_version\t{torch.__version__}")
    print(f"threads\t{torch.get_num_threads()}")
    print(f"attention_impl\t{attn_impl}")
    sys.stdout.flush()

    only = set(args.only.split(",")) if args.only else None
    for cid, shapes, fn in cases:
        if only and cid not in only:
            continue
        try:
            ins = [torch.randn(*s, dtype=torch.float32, requires_grad=True) for s in shapes]
            with torch.no_grad():
                R = torch.randn_like(fn(*ins))

            def run_fwd():
                with torch.no_grad():
                    out = fn(*ins)
                del out

            def run_fwd_bwd():
                out = fn(*ins)
                out.backward(R)
                del out
                for t in ins:
                    t.grad = None

            for mode, run in (("fwd", run_fwd), ("fwd+bwd", run_fwd_bwd)):
                times = []
                for it in range(args.warmup + args.reps):
                    t0 = time.perf_counter_ns()
                    run()
                    t1 = time.perf_counter_ns()
                    if it >= args.warmup:
                        times.append((t1 - t0) / 1e6)
                print(f"torch\t{cid}\t{mode}\t{statistics.median(times):.4f}")
                sys.stdout.flush()
        except Exception as e:  # report and go on with the other cases
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            for mode in ("fwd", "fwd+bwd"):
                print(f"torch\t{cid}\t{mode}\tnan\t{msg}")


if __name__ == "__main__":
    main()
