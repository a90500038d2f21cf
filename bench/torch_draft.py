#!/usr/bin/env python3
"""torch_draft.py — the PyTorch + diffusers side of bench/bench_draft.c: the same cases, inputs and method.

Model: the diffusers folder --model (default ../shared/parity/tiny-sd): UNet2DConditionModel,
AutoencoderKL, DDIMScheduler. Inputs come from the parity golden files so both sides see the
same numbers: the UNet cases use golden/unet.safetensors (sample [4,4,16,16], timestep,
encoder_hidden_states [4,77,32], loss_weights R); the DRaFT cases use golden/unet's
encoder_hidden_states as the guidance context [uncond; cond] of batch 2, and the top-left
(size/8)^2 corner of golden/draft's init_latents and lv_noise.

Cases (one per process; the script runs one case per call):
  unet_fwd      UNet forward under torch.no_grad()
  unet_fwdbwd   forward, then out.backward(R): grads of every parameter, sample and context
  lv            DRaFT-LV, n = 2: T no-grad guided DDIM steps, re-noise x0 twice to the last
                timestep, one differentiable guided step on both copies (one batch), decode, reward
  k1, k10       DRaFT-K: T - K no-grad steps, K differentiable steps, decode, reward
  full          DRaFT with K = T
Every differentiable UNet call (the guided call on [uncond; cond] plus the DDIM step) is one
torch.utils.checkpoint(use_reentrant=False) segment; the VAE decoder runs with diffusers'
gradient checkpointing (mid block and each up block a segment, use_reentrant=False), as the
engine checkpoints each VAE block. LoRA: diffusers' LoRALinearLayer (rank 4, alpha = rank,
up = 0) set on to_q/to_k/to_v/to_out.0 of every attention (LoRACompatibleLinear, scale 1);
only the LoRA weights require grad. Reward: mean of the decoded images; loss = -reward.

Memory: the first step of the process is measured: /proc/self/clear_refs "5" resets the peak
RSS (VmHWM) just before it, and peak = VmHWM after - VmRSS before (MiB). Then warm-up and timed
steps: median wall time (time.perf_counter_ns) of --reps steps after --warmup untimed ones;
--reps 0 runs only the measured first step and reports its time.

Prints tab-separated lines for bench/run_draft_bench.sh:
  torch_version <v> / diffusers_version <v> / RESULT <case> <median ms> <peak RSS MiB> <reward>
usage: torch_draft.py --case CASE [--threads N] [--reps N] [--warmup N] [--steps T] [--size PX] [--model DIR]
"""
import argparse
import os
import statistics
import sys
import time


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", required=True, choices=["unet_fwd", "unet_fwdbwd", "lv", "k1", "k10", "full"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (latents: size/8)")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch
    import torch.utils.checkpoint as ckpt
    import diffusers
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.models.lora import LoRALinearLayer
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    parity = os.path.join(root, "..", "shared", "parity")
    model = args.model or os.path.join(parity, "tiny-sd")
    print(f"torch_version\t{torch.__version__}")
    print(f"diffusers_version\t{diffusers.__version__}")
    print(f"threads\t{torch.get_num_threads()}")

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").float()
    gu = load_file(os.path.join(parity, "golden", "unet.safetensors"))
    case = args.case

    if case.startswith("unet"):
        unet.train(False)
        x = gu["sample"].clone().requires_grad_(case == "unet_fwdbwd")
        ctx = gu["encoder_hidden_states"].clone().requires_grad_(case == "unet_fwdbwd")
        t = gu["timestep"]
        R = gu["loss_weights"]
        leaves = list(unet.parameters()) + [x, ctx]

        def step():
            if case == "unet_fwd":
                with torch.no_grad():
                    out = unet(x, t, encoder_hidden_states=ctx).sample
                del out
                return float("nan")
            for p in leaves:
                p.grad = None
            out = unet(x, t, encoder_hidden_states=ctx).sample
            out.backward(R)
            return float("nan")
    else:
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae").float()
        sched = DDIMScheduler.from_pretrained(model, subfolder="scheduler")
        for p in list(unet.parameters()) + list(vae.parameters()):
            p.requires_grad_(False)
        vae.enable_gradient_checkpointing()
        vae.train(True)   # diffusers checkpoints the decoder only in training mode (no dropout in it)
        unet.train(False)
        lora = []
        for name, mod in unet.named_modules():
            if name.endswith(("attn1", "attn2")):
                for proj in (mod.to_q, mod.to_k, mod.to_v, mod.to_out[0]):
                    layer = LoRALinearLayer(proj.in_features, proj.out_features, rank=4)
                    proj.set_lora_layer(layer)
                    lora += list(layer.parameters())
        gd = load_file(os.path.join(parity, "golden", "draft.safetensors"))
        h = args.size // 8
        init = gd["init_latents"][:, :, :h, :h].contiguous()
        lv_noise = gd["lv_noise"][:, :, :, :h, :h].contiguous()
        context = gu["encoder_hidden_states"].clone()   # [uncond (2); cond (2)]
        B, T, g = init.shape[0], args.steps, 7.5
        sf = vae.config.scaling_factor
        sched.set_timesteps(T)
        ts = [int(v) for v in sched.timesteps]

        def ddim_step(x, t, c):
            n = x.shape[0]
            eps = unet(torch.cat([x, x]), t, encoder_hidden_states=c).sample
            eu, ec = eps[:n], eps[n:]
            return sched.step(eu + g * (ec - eu), t, x, eta=0.0).prev_sample

        def seg(x, t, c):
            return ckpt.checkpoint(ddim_step, x, t, c, use_reentrant=False)

        def step():
            for p in lora:
                p.grad = None
            first = {"lv": T, "full": 0, "k1": T - 1, "k10": T - 10}[case]
            x = init
            for i, t in enumerate(ts):
                if i < first:
                    with torch.no_grad():
                        x = ddim_step(x, t, context)
                else:
                    x = seg(x, t, context)
            if case == "lv":
                t1 = ts[-1]
                ab = float(sched.alphas_cumprod[t1])
                n = 2
                x1 = ab ** 0.5 * torch.cat([x] * n) + (1 - ab) ** 0.5 * lv_noise[:n].reshape(n * B, *x.shape[1:])
                c = torch.cat([context[:B]] * n + [context[B:]] * n)
                x = seg(x1, t1, c)
            img = vae.decode(x / sf).sample
            J = img.mean()
            (-J).backward()
            return float(J)

    reset_ok = reset_peak_rss()
    rss0 = rss_kib("VmRSS")
    t0 = time.perf_counter_ns()
    J = step()
    first_ms = (time.perf_counter_ns() - t0) / 1e6
    peak = (rss_kib("VmHWM") - rss0) / 1024.0 if reset_ok else float("nan")
    for _ in range(max(0, args.warmup - 1) if args.reps > 0 else 0):
        step()
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter_ns()
        step()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    if not times:
        times = [first_ms]   # --reps 0: the measured first step is the only one (a memory run)
    print(f"RESULT\t{case}\t{statistics.median(times):.3f}\t{peak:.2f}\t{J:.9g}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
