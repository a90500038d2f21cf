"""PyTorch side of bench_gpu.c: the same cases, same names, median of timed repetitions
measured with CUDA events after warm-up. Prints RESULT lines."""
import math
import os
import statistics
import torch
import torch.nn.functional as F

dev = "cuda"


# BENCH_ONLY=NAME[,NAME...]: only those rows, each once after a warm-up call inside the profiler's
# window (torch.cuda.profiler.start / stop), for `ncu --profile-from-start off`; nothing is timed
ONLY = [n for n in os.environ.get("BENCH_ONLY", "").split(",") if n]


def timed(fn, warm, reps, burst=1, name=""):
    """median over reps of the event time of `burst` back-to-back calls, divided by burst"""
    if ONLY:
        if name in ONLY:
            fn()
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
            for _ in range(burst):
                fn()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            print(f"PROFILED {name} ok", flush=True)
        return math.nan
    ts = []
    for i in range(warm + reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        s.record()
        for _ in range(burst):
            fn()
        e.record()
        torch.cuda.synchronize()
        if i >= warm:
            ts.append(s.elapsed_time(e) / burst)
    return statistics.median(ts)


def main():
    torch.manual_seed(1)
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}")
    def matmul_row(name, a, b, flops, mode, warm=2, reps=10):
        """one product a @ b: exact f32, TF32, or under autocast to bf16"""
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "autocast"):
            ms = timed(lambda: a @ b, warm, reps, name=name)
        print(f"RESULT {name} {ms:.3f} {flops / ms / 1e9:.1f} TFLOP/s")

    flops = 2 * 8192 ** 3
    a = torch.randn(8192, 8192, device=dev)
    b = torch.randn(8192, 8192, device=dev)
    for mode in ("f32", "tf32", "autocast"):
        matmul_row(f"matmul_{mode}_8192", a, b, flops, mode)
    ab, bb = a.bfloat16(), b.bfloat16()
    matmul_row("matmul_bf16_8192", ab, bb, flops, "f32")
    del a, b, ab, bb
    # SD's feed-forward linear at 64 px, batch 2: memory-bound; TF32, then autocast (bf16 out)
    a = torch.randn(8192, 320, device=dev)
    b = torch.randn(320, 2560, device=dev)
    for mode in ("tf32", "autocast"):
        matmul_row(f"matmul_{mode}_ff", a, b, 2 * 8192 * 320 * 2560, mode, 3, 20)
    del a, b
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
    for i, (C, S) in enumerate(((320, 64), (640, 32), (1280, 16), (320, 64), (320, 64), (128, 512), (256, 256),
                                (512, 128), (128, 512), (256, 256))):
        torch.backends.cudnn.allow_tf32 = i != 4  # the fifth: exact f32
        for bw in (False, True):
            x = torch.randn(2, C, S, S, device=dev, requires_grad=bw)
            w = torch.randn(C, C, 3, 3, device=dev, requires_grad=bw)
            bias = torch.randn(C, device=dev, requires_grad=bw)
            g = torch.randn(2, C, S, S, device=dev)

            def run():
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=i == 3 or i >= 8):
                    y = F.conv2d(x, w, bias, padding=1)
                if bw:
                    y.backward(g)
            mode = "_autocast" if i == 3 or i >= 8 else "_f32" if i == 4 else ""
            name = f"conv2d_{C}c_{S}px_{'fwdbwd' if bw else 'fwd'}{mode}"
            ms = timed(run, 3, 20, name=name)
            f = 2.0 * 2 * C * S * S * C * 9 * (3 if bw else 1)
            # the same reference for the rows of our opt-in variants (bench_gpu.c's list)
            suffixes = ("_pipe", "_rowshift", "_implicit", "_actf32", "_acwino") if i == 3 else ("_implicit", "_wino") if i == 4 else \
                ("_halo", "_halo_bm64", "_halo_bm128", "_ws16m", "_ws8m", "_wino", "_wino_ws256m") if i == 5 else \
                ("_actf32", "_acwino") if i >= 8 else ("_halo", "_wino") if i > 5 else \
                ("_rowshift", "_implicit", "_implicit_bm128", "_halo", "_halo_bm64", "_halo_bm128", "_ws16m", "_ws8m",
                 "_wino", "_wino_ws256m") + (("_pipe",) if i == 0 else ("_implicit_split1",))
            for suffix in ("",) + suffixes:
                print(f"RESULT {name}{suffix} {ms:.3f} {f / ms / 1e9:.1f} TFLOP/s")
    torch.backends.cudnn.allow_tf32 = True
    for bw in (False, True):
        x = torch.randn(2, 320, 64, 64, device=dev, requires_grad=bw)
        w = torch.randn(320, device=dev, requires_grad=bw)
        bias = torch.randn(320, device=dev, requires_grad=bw)
        g = torch.randn(2, 320, 64, 64, device=dev)

        def run():  # fwd+bwd: the leaves' .grad dropped first, as bench_gpu.c's run_gn (no add onto them)
            y = F.group_norm(x, 32, w, bias, 1e-5)
            if bw:
                x.grad = w.grad = bias.grad = None
                y.backward(g)
        ms = timed(run, 3, 20, name=f"group_norm_{'fwdbwd' if bw else 'fwd'}")
        byts = 2.0 * 320 * 64 * 64 * 4 * (5 if bw else 2)
        print(f"RESULT group_norm_{'fwdbwd' if bw else 'fwd'} {ms:.3f} {byts / ms / 1e6:.1f} GB/s")
        if bw:  # the same reference for our one-pass backward's row
            print(f"RESULT group_norm_fwdbwd_fused_bwd {ms:.3f} {byts / ms / 1e6:.1f} GB/s")
        # the burst rows use 8 input sets in turn (more than the L2 holds), as bench_gpu.c does
        xs = [torch.randn(2, 320, 64, 64, device=dev, requires_grad=bw) for _ in range(8)]
        gs = [torch.randn(2, 320, 64, 64, device=dev) for _ in range(8)]
        it = [0]

        def run_rot():
            r = it[0] % 8
            it[0] += 1
            y = F.group_norm(xs[r], 32, w, bias, 1e-5)
            if bw:
                xs[r].grad = w.grad = bias.grad = None
                y.backward(gs[r])
        ms = timed(run_rot, 3, 20, 20, name=f"group_norm_{'fwdbwd' if bw else 'fwd'}_burst20")
        print(f"RESULT group_norm_{'fwdbwd' if bw else 'fwd'}_burst20 {ms:.3f} {byts / ms / 1e6:.1f} GB/s")
        if bw:
            print(f"RESULT group_norm_fwdbwd_fused_bwd_burst20 {ms:.3f} {byts / ms / 1e6:.1f} GB/s")
        del xs, gs
    x = torch.randn(2, 320, 64, 64, device=dev)
    y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x), 3, 20, name="copy_10M")
    print(f"RESULT copy_10M {ms:.3f} {2.0 * x.numel() * 4 / ms / 1e6:.1f} GB/s")
    xs = [torch.randn(2, 320, 64, 64, device=dev) for _ in range(8)]
    ys = [torch.empty_like(x) for _ in range(8)]
    it = [0]

    def copy_rot():
        r = it[0] % 8
        it[0] += 1
        ys[r].copy_(xs[r])
    ms = timed(copy_rot, 3, 20, 20, name="copy_10M_burst20")
    print(f"RESULT copy_10M_burst20 {ms:.3f} {2.0 * x.numel() * 4 / ms / 1e6:.1f} GB/s")
    del xs, ys
    # attention: SD's first level (B 2, 8 heads, L 4096, d 40) with the reference rows of our
    # variants; the VAE's mid-block attention at 64x64 latents (one 512-wide head)
    for prefix, (B, H, L, D) in (("attention", (2, 8, 4096, 40)), ("attention_vae", (4, 1, 4096, 512))):
        for bw in (False, True):
            q, k, v = (torch.randn(B, H, L, D, device=dev, requires_grad=bw) for _ in range(3))
            g = torch.randn(B, H, L, D, device=dev)

            def run():
                y = F.scaled_dot_product_attention(q, k, v)
                if bw:
                    y.backward(g)
            name = f"{prefix}_{'fwdbwd' if bw else 'fwd'}"
            ms = timed(run, 3, 20, name=name)
            f = 4.0 * B * H * L * L * D * (3.5 if bw else 1)
            print(f"RESULT {name} {ms:.3f} {f / ms / 1e9:.1f} TFLOP/s")
            if prefix != "attention":
                continue
            if bw:  # the same reference for our fused-dQ backward's row
                print(f"RESULT attention_fwdbwd_fused_dq {ms:.3f} {f / ms / 1e9:.1f} TFLOP/s")
            # and for our f32 tensor-core (3xTF32) rows, their float4-load variants and our TF32
            # rows (one tf32 product: less accurate than torch's f32 kernels, which are the only
            # f32 reference there is): torch's f32 kernels
            for suffix in ("_mma", "_mma_vec4", "_mma_packed", "_mma_packed_vec4", "_tf32", "_tf32_vec4", "_tf32_packed",
                           "_tf32_packed_vec4"):
                print(f"RESULT {name}{suffix} {ms:.3f} {f / ms / 1e9:.1f} TFLOP/s")

            gb = g.bfloat16()  # the autocast output is bf16: so is its gradient

            def run_autocast():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y = F.scaled_dot_product_attention(q, k, v)
                if bw:
                    y.backward(gb)
            ms = timed(run_autocast, 3, 20, name=f"{name}_autocast")
            for suffix in ("_autocast", "_autocast_vec4", "_autocast_packed", "_autocast_packed_vec4"):
                print(f"RESULT {name}{suffix} {ms:.3f} {f / ms / 1e9:.1f} TFLOP/s")
    n = 1 << 26
    a = torch.randn(n, device=dev)
    b = torch.randn(n, device=dev)
    c = torch.empty(n, device=dev)
    ms = timed(lambda: c.copy_(a), 3, 20, name="copy_64M")
    print(f"RESULT copy_64M {ms:.3f} {2 * n * 4 / ms / 1e6:.1f} GB/s")
    ms = timed(lambda: torch.add(a, b), 3, 20, name="add_64M")
    print(f"RESULT add_64M {ms:.3f} {3 * n * 4 / ms / 1e6:.1f} GB/s")


if __name__ == "__main__":
    main()
