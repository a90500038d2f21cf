"""What the reference scripts share: random weights away from their init, and float64 golden values
computed from exactly what the float32 files store."""
import torch


def rnd(*shape):
    """a float64 tensor of float32 values"""
    return torch.randn(*shape, dtype=torch.float32).double()


def randomise(module):
    """every parameter away from its init: norms' weights off 1, biases off 0, matrices ~ 1/sqrt(fan_in)"""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)


def f32(d):
    """a dict of tensors as safetensors stores them: floats in float32, contiguous"""
    return {k: (v.float() if v.is_floating_point() else v).detach().contiguous() for k, v in d.items()}


class LoRALinear(torch.nn.Module):
    """PEFT's LoRA on a Linear: y = base(x) + scale * B(A(x)) (A [r, in], B [out, r], no biases)"""

    def __init__(self, base, A, B, scale):
        super().__init__()
        self.base, self.scale = base, scale
        self.A, self.B = torch.nn.Parameter(A), torch.nn.Parameter(B)

    def forward(self, x):
        return self.base(x) + self.scale * torch.nn.functional.linear(torch.nn.functional.linear(x, self.A), self.B)


def draft_golden(unet, vae, sched, context, added, init, steps=4, guidance=7.5, rank=2):
    """golden/draft.safetensors as ../shared/parity/README.md defines it, in float64: LoRA rank 2, scale 1, on
    to_q, to_k, to_v, to_out.0 of every attention (B non-zero); DDIM `steps` steps, eta 0, guided; the reward J =
    mean over the batch of mean(vae.decode(latents / scaling) * reward_weights); for full DRaFT, DRaFT-K (k = 1, 2)
    and DRaFT-LV (n = 2 re-noisings of the no-grad sample to the last timestep, one guided step each): J and dJ
    for every LoRA weight. `added(n)`: the UNet's added_cond_kwargs for a batch of n [uncond; cond] rows, or None."""
    loras, out = {}, {}
    for name, mod in unet.named_modules():
        for leaf in ("to_q", "to_k", "to_v"):
            lin = getattr(mod, leaf, None)
            if isinstance(lin, torch.nn.Linear) and name.endswith(("attn1", "attn2")):
                loras[f"{name}.{leaf}"] = (mod, leaf, None)
        if name.endswith(("attn1", "attn2")) and hasattr(mod, "to_out"):
            loras[f"{name}.to_out.0"] = (mod, "to_out", 0)
    params = {}
    for key, (mod, leaf, idx) in loras.items():
        lin = getattr(mod, leaf) if idx is None else getattr(mod, leaf)[idx]
        A = rnd(rank, lin.in_features) / lin.in_features ** 0.5
        B = rnd(lin.out_features, rank) * 0.1
        wrapped = LoRALinear(lin, A, B, 1.0)
        if idx is None:
            setattr(mod, leaf, wrapped)
        else:
            getattr(mod, leaf)[idx] = wrapped
        params[key] = wrapped
        out[f"lora.{key}.lora_A.weight"], out[f"lora.{key}.lora_B.weight"] = A.clone(), B.clone()
    for p in unet.parameters():
        p.requires_grad_(False)
    for w in params.values():
        w.A.requires_grad_(True), w.B.requires_grad_(True)
    n = init.shape[0]
    H, W = init.shape[2] * 2 ** (len(vae.config.block_out_channels) - 1), init.shape[3] * 2 ** (len(vae.config.block_out_channels) - 1)
    weights = rnd(3, H, W)
    lv_noise = rnd(2, *init.shape)
    out.update({"init_latents": init, "reward_weights": weights, "lv_noise": lv_noise})
    sched.set_timesteps(steps)
    ts = sched.timesteps

    def step(x, t, ctx):
        k = x.shape[0]
        e = unet(torch.cat([x, x]), t, ctx, added_cond_kwargs=added(2 * k)).sample
        e_u, e_c = e.chunk(2)
        return sched.step(e_u + guidance * (e_c - e_u), t, x, eta=0.0).prev_sample

    def reward(x):
        img = vae.decode(x / vae.config.scaling_factor).sample
        return (img * weights).mean(dim=(1, 2, 3)).mean()

    def grads(prefix, J):
        for w in params.values():
            w.A.grad = w.B.grad = None
        J.backward()
        out[f"{prefix}.reward"] = J.detach().reshape(1)
        for key, w in params.items():
            out[f"{prefix}.grad.{key}.lora_A.weight"] = w.A.grad.clone()
            out[f"{prefix}.grad.{key}.lora_B.weight"] = w.B.grad.clone()

    for variant, k in (("full", steps), ("k1", 1), ("k2", 2)):
        x = init
        for i, t in enumerate(ts):
            if i < steps - k:
                with torch.no_grad():
                    x = step(x, t, context)
            else:
                x = step(x, t, context)
        out[f"{variant}.final_latents"] = x.detach()
        grads(variant, reward(x))
    with torch.no_grad():
        x0 = init
        for t in ts:
            x0 = step(x0, t, context)
    out["lv.x0"] = x0
    t1 = ts[-1]
    ab = sched.alphas_cumprod[t1].double()
    ctx2 = torch.cat([context[:n], context[:n], context[n:], context[n:]])
    x1 = torch.cat([ab.sqrt() * x0 + (1 - ab).sqrt() * lv_noise[i] for i in range(2)])
    y = step(x1, t1, ctx2)
    J = (reward(y[:n]) + reward(y[n:])) / 2
    grads("lv", J)
    return out
