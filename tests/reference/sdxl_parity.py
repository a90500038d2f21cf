#!/usr/bin/env python3
"""sdxl_parity.py OUT [SHARED_PARITY] [--no-force-zeros] — a parity folder for Stable Diffusion XL.

Writes OUT/tiny-sd, a StableDiffusionXLPipeline folder with tiny sizes: a UNet shaped like SDXL's
(a plain first down block, transformer_layers_per_block per block, Linear projections, heads per
block, the "text_time" added embedding of the pooled text and the six size/crop ids), two
tokenizers (CLIP's vocabulary; the second pads with "!"), a CLIPTextModel and a
CLIPTextModelWithProjection, a VAE with SDXL's scaling factor and a DDIM schedule; OUT/golden with
unet.safetensors (sample, timestep, encoder_hidden_states, text_embeds, time_ids -> out, and the
gradient of sum(out * loss_weights) for every parameter and float input) and pipeline.safetensors
(diffusers' own encode_prompt and time ids, 4 guided DDIM steps at 128 px, the decode) and
draft.safetensors (the DRaFT family's reward gradients), computed in float64; and OUT/sdxl with stabilityai/stable-diffusion-xl-base-1.0's UNet config and every
parameter name and shape diffusers builds from it, so that

    DRAFT_PARITY_DIR=OUT meson test -C build unet pipeline draft

checks them against diffusers (test_parity of both, test_manifest_sdxl, test_golden_gradients). --no-force-zeros writes a
folder whose unconditional half is the encoded empty prompt, not zeros. The tokenizer's
vocabulary and the VAE come from SHARED_PARITY/tiny-sd (default ../shared/parity next to the
repository). Needs torch, diffusers, transformers and safetensors (from PyPI); the project itself
never runs Python.
"""
import json, os, shutil, sys

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from reference_util import draft_golden, f32, randomise, rnd
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

args = [a for a in sys.argv[1:] if not a.startswith("--")]
force_zeros = "--no-force-zeros" not in sys.argv
out = args[0]
shared = args[1] if len(args) > 1 else os.path.join(os.path.dirname(__file__), "../../../shared/parity")
sd = os.path.join(out, "tiny-sd")
os.makedirs(os.path.join(out, "golden"), exist_ok=True)
torch.manual_seed(3)








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

# ---- the rest of the pipeline: two tokenizers and text encoders (32 + 16 = the UNet's 48), the VAE
for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
    shutil.copytree(os.path.join(shared, "tiny-sd", "tokenizer"), os.path.join(sd, sub), dirs_exist_ok=True)
    for f in ("special_tokens_map.json", "tokenizer_config.json"):
        p = os.path.join(sd, sub, f)
        j = json.load(open(p))
        j["pad_token"] = pad
        json.dump(j, open(p, "w"), indent=2)
torch.set_default_dtype(torch.float64)
te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                                  projection_dim=32)).eval()
te2 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=48,
                                                 num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=77,
                                                 hidden_act="gelu", projection_dim=16)).eval()
for m, sub in ((te, "text_encoder"), (te2, "text_encoder_2")):
    randomise(m)
    m.float().save_pretrained(os.path.join(sd, sub), safe_serialization=True)
    m.double()
shutil.copytree(os.path.join(shared, "tiny-sd", "vae"), os.path.join(sd, "vae"), dirs_exist_ok=True)
vcfg = json.load(open(os.path.join(sd, "vae", "config.json")))
vcfg["scaling_factor"] = 0.13025
json.dump(vcfg, open(os.path.join(sd, "vae", "config.json"), "w"), indent=2)
vae = AutoencoderKL.from_pretrained(os.path.join(sd, "vae")).double().eval()
sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
sched.save_pretrained(os.path.join(sd, "scheduler"))
json.dump({"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": force_zeros,
           "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
           "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
           "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
           "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]},
          open(os.path.join(sd, "model_index.json"), "w"), indent=2)
tok, tok2 = CLIPTokenizer.from_pretrained(os.path.join(sd, "tokenizer")), CLIPTokenizer.from_pretrained(
    os.path.join(sd, "tokenizer_2"))
pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                                 unet=unet, scheduler=sched, force_zeros_for_empty_prompt=force_zeros)
prompts = ["a photograph of an astronaut riding a horse", "a watercolor painting of a red fox in the snow"]
ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
uids = tok(["", ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
with torch.no_grad():
    pe, npe, pooled, npooled = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=True)
    ctx = torch.cat([npe, pe])
    add_text = torch.cat([npooled, pooled])
    tid = pipe._get_add_time_ids((128, 128), (0, 0), (128, 128), dtype=torch.float64,
                                 text_encoder_projection_dim=16)
    add_time = torch.cat([tid, tid]).repeat(2, 1)
    lat = rnd(2, 4, 16, 16)
    rec = {"input_ids": ids.int(), "uncond_input_ids": uids.int(), "init_latents": lat.clone()}
    sched.set_timesteps(4)
    for i, ts in enumerate(sched.timesteps):
        e_u, e_c = unet(torch.cat([lat, lat]), ts, ctx,
                        added_cond_kwargs={"text_embeds": add_text, "time_ids": add_time}).sample.chunk(2)
        lat = sched.step(e_u + 7.5 * (e_c - e_u), ts, lat, eta=0.0).prev_sample
        rec[f"latents_after_step{i}"] = lat.clone()
    rec["image"] = vae.decode(lat / vae.config.scaling_factor).sample
    rec["timesteps"] = sched.timesteps.clone()
    rec["prompt_embeds"], rec["pooled_prompt_embeds"] = pe, pooled
    # with clip_skip=1: both encoders' hidden_states[-3]; the pooled text unchanged
    rec["prompt_embeds_clip_skip1"], _, rec["pooled_prompt_embeds_clip_skip1"], _ = pipe.encode_prompt(
        prompts, device="cpu", do_classifier_free_guidance=False, clip_skip=1)
save_file(f32(rec), os.path.join(out, "golden", "pipeline.safetensors"),
          metadata={"num_inference_steps": "4", "eta": "0", "cfg_batch_order": "uncond then cond",
                    "guidance_scale": "7.5", "force_zeros_for_empty_prompt": str(force_zeros), "size": "128x128"})
# ---- the DRaFT family's reward gradients with the added conditioning (golden/draft.safetensors)


def added(rows):
    r = rows // 4   # rows = 2 x latents, latents = r x the 2 prompts: [uncond x r; cond x r]
    return {"text_embeds": torch.cat([npooled] * r + [pooled] * r), "time_ids": tid.repeat(rows, 1)}


save_file(f32(draft_golden(unet, vae, sched, ctx.detach(), added, rnd(2, 4, 16, 16))),
          os.path.join(out, "golden", "draft.safetensors"), metadata={"lora": "rank 2, scale 1", "steps": "4",
                                                                      "guidance": "7.5"})
torch.set_default_dtype(torch.float32)

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
