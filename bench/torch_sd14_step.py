#!/usr/bin/env python3
"""torch_sd14_step.py — the PyTorch + diffusers side of bench/bench_sd14_step.c: one DRaFT training
step of the real Stable Diffusion 1.4 architecture with random weights, as a user of those
libraries would write it, on the same card.

Built from the same configs (<shared>/parity/sd14): diffusers' UNet2DConditionModel, AutoencoderKL
and DDIMScheduler (from_config), transformers' CLIPVisionModelWithProjection with the LAION
aesthetic MLP head (768-1024-128-64-16-1) as the reward. Weights are each library's default random
initialisation (the engine's is the same rule, U(+-1/sqrt(fan_in)); the values differ, the work
does not). The guidance context [uncond; cond] is N(0, 1) of shape [2B, 77, 768], as the text
encoder's output would be.

Trainable: a LoRA (rank R, alpha R, up = 0) on to_q / to_k / to_v / to_out.0 of every attention of
the UNet (a small wrapper module, the same across diffusers versions), in f32, with AdamW.
The step, as draft/train.c's draft_objective_backward then nn_adamw_step:
  lv:   T no-grad guided DDIM steps (eta 0), x0 re-noised n times to the last timestep, one
        differentiable guided step on all n copies in one batch;
  k:    T - K no-grad steps, then K differentiable ones;  full: all T differentiable;
then decode ((x / scaling_factor) through the VAE decoder), the reward (images to [0, 1], CLIP's
resize to 224 and normalisation, image embedding, L2 normalisation, head), the mean, backward of
-J into the LoRA, one AdamW step. Checkpointing (default on, as the engine's): each differentiable
guided UNet call + DDIM step is one torch.utils.checkpoint segment (use_reentrant=False), and the
VAE decoder runs with diffusers' gradient checkpointing.

Precision (--precision): f32 (TF32 off for matmuls and cuDNN: torch's cuDNN default is on), tf32
(both on), bf16 (torch.autocast to bfloat16 around the whole step's forward, f32 weights: what the
engine's bf16 precision does). Attention is diffusers' default processor: scaled_dot_product_attention
on torch 2, which picks flash / memory-efficient kernels by itself.

Memory (cuda): torch.cuda.memory_allocated before the step (weights, LoRA, inputs; torch.optim.AdamW
makes its 12 MiB of moments in the first step, ours before it) and max_memory_allocated during it (the counterpart of the engine's allocator peak); on the CPU the
process's peak RSS increase (VmHWM) instead. Time: the first step (with its warm-up: cuDNN / cuBLAS
heuristics, allocator growth), and with --reps N > 1 the median of steps 2..N.

Prints one line in bench_sd14_step's form:
  sd14_step: side=torch device=cuda precision=tf32 method=lv B=4 size=512 T=50 weights=... peak=...
  act=... seconds=... seconds_next=... sample_s=... reward=vit-aesthetic torch=... diffusers=...
usage: torch_sd14_step.py [--shared DIR] [--method lv|k|full] [--steps T] [--batch B] [--size PX]
       [--precision f32|tf32|bf16] [--device cuda|cpu] [--reps N] [--lora-rank R] [--no-checkpoint] ...
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

from torch_draft import reset_peak_rss, rss_kib   # bench/, beside this script


def fmt_bytes(b):
    """the engine's mem_format without the space (bench_sd14_step's bytes_str)"""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    v, i = float(b), 0
    while v >= 1024 and i < 4:
        v /= 1024
        i += 1
    return f"{v:.2f}{units[i]}" if i else f"{v:.0f}{units[i]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=None, help="the shared folder (configs in DIR/parity/sd14)")
    ap.add_argument("--method", default="lv", choices=["lv", "k", "full"])
    ap.add_argument("--lv-n", type=int, default=2)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--no-checkpoint", action="store_true")
    ap.add_argument("--reward-vit", action="store_true", help="accepted for bench_sd14_step's arguments: the only reward here")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16"])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.size % 64:
        sys.exit(f"torch_sd14_step: --size {a.size}: SD 1.4 needs a multiple of 64")
    if a.method == "k" and a.k > a.steps:
        sys.exit(f"torch_sd14_step: --k {a.k} is more than --steps {a.steps}")

    import torch
    import torch.nn.functional as F
    import torch.utils.checkpoint as ckpt
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_sd14_step: no CUDA device")
    tf32 = a.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(a.seed)

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    if a.shared:
        cdir = os.path.join(a.shared, "parity", "sd14")
    elif os.environ.get("DRAFT_PARITY_DIR"):
        cdir = os.path.join(os.environ["DRAFT_PARITY_DIR"], "sd14")
    else:
        cdir = os.path.join(root, "..", "shared", "parity", "sd14")

    def config(name):
        with open(os.path.join(cdir, name)) as f:
            return json.load(f)

    t_build = time.perf_counter()
    unet = UNet2DConditionModel.from_config(config("unet.config.json")).to(dev)
    vae = AutoencoderKL.from_config(config("vae.config.json")).to(dev)
    sched = DDIMScheduler.from_config(config("scheduler_config.json"))
    vc = {k: v for k, v in config("image_encoder.config.json").items() if k not in ("architectures", "model_type")}
    vit = CLIPVisionModelWithProjection(CLIPVisionConfig(**vc)).to(dev)
    widths = [768, 1024, 128, 64, 16, 1]
    head = torch.nn.Sequential(*[torch.nn.Linear(widths[i], widths[i + 1]) for i in range(5)]).to(dev)
    for m in (unet, vae, vit, head):
        m.requires_grad_(False)
        m.train(False)
    if not a.no_checkpoint:
        vae.enable_gradient_checkpointing()
        vae.train(True)   # diffusers checkpoints the decoder only in training mode (it has no dropout)

    class LoRA(torch.nn.Module):
        """base(x) + (alpha / rank) up(down(x)), up = 0 at the start; f32 whatever the autocast"""

        def __init__(self, base, rank):
            super().__init__()
            self.base = base
            self.down = torch.nn.Linear(base.in_features, rank, bias=False, device=dev)
            self.up = torch.nn.Linear(rank, base.out_features, bias=False, device=dev)
            torch.nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            torch.nn.init.zeros_(self.up.weight)

        def forward(self, x, *args, **kwargs):   # diffusers may pass a LoRA scale: the base needs x only
            return self.base(x) + self.up(self.down(x))   # alpha = rank: scale 1

    lora = []
    for name, mod in unet.named_modules():
        if name.endswith(("attn1", "attn2")):
            mod.to_q, mod.to_k, mod.to_v = (LoRA(p, a.lora_rank) for p in (mod.to_q, mod.to_k, mod.to_v))
            mod.to_out[0] = LoRA(mod.to_out[0], a.lora_rank)
            for p in (mod.to_q, mod.to_k, mod.to_v, mod.to_out[0]):
                lora += [p.down.weight, p.up.weight]
    opt = torch.optim.AdamW(lora, lr=1e-4)

    B, T, g = a.batch, a.steps, a.guidance
    h = a.size // 8
    context = torch.randn(2 * B, 77, unet.config.cross_attention_dim, device=dev)
    latents = torch.randn(B, unet.config.in_channels, h, h, device=dev)
    sf = vae.config.scaling_factor
    sched.set_timesteps(T)
    ts = [int(v) for v in sched.timesteps]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=dev).view(1, 3, 1, 1)
    build_s = time.perf_counter() - t_build

    def guided(x, t, c):
        n = x.shape[0]
        eps = unet(torch.cat([x, x]), t, encoder_hidden_states=c).sample
        eu, ec = eps[:n], eps[n:]
        return sched.step(eu + g * (ec - eu), t, x, eta=0.0).prev_sample

    def call(x, t, c):
        if a.no_checkpoint:
            return guided(x, t, c)
        return ckpt.checkpoint(guided, x, t, c, use_reentrant=False)

    def reward(img):
        x = (img / 2 + 0.5).clamp(0, 1)
        x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=True)
        e = vit(pixel_values=(x - mean) / std).image_embeds
        e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return head(e).reshape(-1)

    marks = {}

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def step():
        opt.zero_grad(set_to_none=True)
        t0 = sync()
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            first = {"lv": T, "full": 0, "k": T - a.k}[a.method]
            x = latents
            for i, t in enumerate(ts):
                if i < first:
                    with torch.no_grad():
                        x = guided(x, t, context)
                else:
                    x = call(x, t, context)
            if a.method == "lv":
                t1, n = ts[-1], a.lv_n
                ab = float(sched.alphas_cumprod[t1])
                noise = torch.randn(n * B, *x.shape[1:], device=dev)
                x1 = ab ** 0.5 * torch.cat([x] * n) + (1 - ab) ** 0.5 * noise
                c = torch.cat([context[:B]] * n + [context[B:]] * n)
                x = call(x1, t1, c)
            img = vae.decode(x / sf).sample
            marks["reward_in"] = sync() - t0
            J = reward(img).float().mean()
        (-J).backward()
        opt.step()
        return float(J), sync() - t0

    cuda = a.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        weights = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        weights = rss_kib("VmRSS") * 1024
        reset_peak_rss()
    J, first_s = step()
    sample_s = marks["reward_in"]
    peak = torch.cuda.max_memory_allocated() if cuda else rss_kib("VmHWM") * 1024
    more = [step()[1] for _ in range(max(0, a.reps - 1))]
    if cuda:
        peak = max(peak, torch.cuda.max_memory_allocated())
    if not math.isfinite(J):
        sys.exit(f"torch_sd14_step: the reward is {J}")
    grads = sum(1 for p in lora if p.grad is not None)
    print(f"build {build_s:.1f}s; UNet {sum(p.numel() for p in unet.parameters())} parameters (LoRA {sum(p.numel() for p in lora)}, "
          f"{grads} of {len(lora)} with gradients); reward {J:.6g}")
    nxt = f" seconds_next={statistics.median(more):.2f}" if more else ""
    print(f"sd14_step: side=torch device={a.device} precision={a.precision} method={a.method} B={B} size={a.size} T={T} "
          f"weights={fmt_bytes(weights)} peak={fmt_bytes(peak)} act={fmt_bytes(peak - weights)} seconds={first_s:.2f}{nxt} "
          f"sample_s={sample_s:.2f} reward=vit-aesthetic torch={torch.__version__} diffusers={diffusers.__version__} "
          f"transformers={transformers.__version__}")


if __name__ == "__main__":
    main()
