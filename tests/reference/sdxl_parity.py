#!/usr/bin/env python3
"""sdxl_parity.py OUT — a parity folder for Stable Diffusion XL's UNet.

Writes OUT/tiny-sd/unet (a diffusers UNet2DConditionModel shaped like SDXL's: a plain first down
block, transformer_layers_per_block per block, Linear projections, heads per block, and the
"text_time" added embedding of the pooled text and the six size/crop ids), OUT/golden/unet.safetensors
(sample, timestep, encoder_hidden_states, text_embeds, time_ids -> out, and the gradient of
sum(out * loss_weights) for every parameter and float input, computed in float64), and OUT/sdxl
with stabilityai/stable-diffusion-xl-base-1.0's UNet config and every parameter name and shape
diffusers builds from it, so that

    DRAFT_PARITY_DIR=OUT meson test -C build unet

checks the UNet against diffusers (test_parity, test_manifest_sdxl). Needs torch, diffusers and
safetensors (from PyPI); the project itself never runs Python.
"""
import json, os, sys

import torch
from safetensors.torch import save_file
from diffusers import UNet2DConditionModel

out = sys.argv[1]
os.makedirs(os.path.join(out, "golden"), exist_ok=True)
torch.manual_seed(3)


def rnd(*shape):
    """float64 values that float32 holds exactly: the golden is computed from what the file stores"""
    return torch.randn(*shape, dtype=torch.float32).double()


def randomise(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)


def f32(d):
    return {k: (v.float() if v.is_floating_point() else v).detach().contiguous() for k, v in d.items()}


# ---- a tiny SDXL-shaped UNet: 8-wide time ids, 16-wide pooled text (16 + 6 x 8 = 64)
unet = UNet2DConditionModel(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 2, 4), cross_attention_dim=48,
    norm_num_groups=16, use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=64).eval()
randomise(unet)
unet.save_pretrained(os.path.join(out, "tiny-sd", "unet"), safe_serialization=True)
unet.double()

sample = rnd(3, 4, 16, 16).requires_grad_()
ehs = rnd(3, 77, 48).requires_grad_()
text_embeds = rnd(3, 16).requires_grad_()
# (original height, width, crop top, left, target height, width) as SDXL's pipeline passes them
time_ids = torch.tensor([[1024, 1024, 0, 0, 1024, 1024], [768, 1344, 0, 0, 768, 1344], [512, 512, 64, 32, 1024, 1024]],
                        dtype=torch.float64)
t = torch.tensor([999, 500, 1])
o = unet(sample, t, ehs, added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
R = rnd(*o.shape)
(o * R).sum().backward()
golden = {"sample": sample, "timestep": t, "encoder_hidden_states": ehs, "text_embeds": text_embeds,
          "time_ids": time_ids, "out": o, "loss_weights": R, "grad.sample": sample.grad,
          "grad.encoder_hidden_states": ehs.grad, "grad.text_embeds": text_embeds.grad,
          **{f"grad.{n}": p.grad for n, p in unet.named_parameters()}}
save_file(f32(golden), os.path.join(out, "golden", "unet.safetensors"),
          metadata={"loss": "sum(out * loss_weights)", "added_cond_kwargs": "text_embeds, time_ids"})

# ---- the real SDXL base UNet's shapes (stabilityai/stable-diffusion-xl-base-1.0/unet/config.json)
xl = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
      "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
      "block_out_channels": [320, 640, 1280], "center_input_sample": False, "class_embed_type": None,
      "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048,
      "cross_attention_norm": None, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
      "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
      "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
      "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
      "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None,
      "only_cross_attention": False, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
      "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
      "sample_size": 128, "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
      "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
      "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
      "use_linear_projection": True}
os.makedirs(os.path.join(out, "sdxl"), exist_ok=True)
json.dump(xl, open(os.path.join(out, "sdxl", "unet.config.json"), "w"), indent=2)
with torch.device("meta"):
    u = UNet2DConditionModel(**{k: v for k, v in xl.items() if not k.startswith("_")})
names = {k: list(v.shape) for k, v in u.state_dict().items()}
man = {"parameters": {"unet": names},
       "parameter_counts": {"unet": sum(int(torch.tensor(s).prod()) for s in names.values())}}
json.dump(man, open(os.path.join(out, "sdxl", "sdxl-manifest.json"), "w"), indent=1)
print("wrote", out, man["parameter_counts"], len(names))
