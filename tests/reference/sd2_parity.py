#!/usr/bin/env python3
"""sd2_parity.py OUT [SHARED_PARITY] — a parity folder for the Stable Diffusion 2.x architecture.

Writes OUT/tiny-sd (a diffusers pipeline folder shaped like stabilityai/stable-diffusion-2-1:
Linear proj_in/proj_out in the UNet's transformers, a head count per block, an exact-GELU text
encoder, the tokenizer padding with "!" (id 0), a v-prediction DDIM schedule), OUT/golden with
the files the suite's parity tests read (unet, text_encoder, pipeline, draft), laid out as
../shared/parity is, and OUT/sd21 with the real SD 2.1 UNet and text encoder configs and every
parameter name and shape diffusers and transformers build from them, so that

    DRAFT_PARITY_DIR=OUT meson test -C build unet clip pipeline draft

checks the engine against diffusers and transformers on this architecture (test_parity,
test_text_parity, test_manifest_sd21, test_golden_gradients; the tests that need
../shared/parity's other files skip). Random weights, stored in
float32; the golden values are computed in float64 (a gradient that is exactly 0, such as a key
bias's, is then 0 and not float32 round-off). The tokenizer's vocabulary and the VAE are copied from SHARED_PARITY/tiny-sd (default
../shared/parity next to the repository). Needs torch, diffusers, transformers and safetensors
(from PyPI); the project itself never runs Python.
"""
import json, os, shutil, sys

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from reference_util import draft_golden, f32, randomise, rnd
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

out = sys.argv[1]
shared = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "../../../shared/parity")
src = os.path.join(shared, "tiny-sd")
sd = os.path.join(out, "tiny-sd")
gold = os.path.join(out, "golden")
os.makedirs(gold, exist_ok=True)
torch.manual_seed(2)








def grads(module, prefix=""):
    """grad.<name>: the parameter names of transformers 4.x (CLIPTextModel's text_model. prefix, which 5.x dropped)"""
    return {f"grad.{prefix}{n}": p.grad.detach().clone().contiguous() for n, p in module.named_parameters()}


# ---- tokenizer: CLIP's vocabulary, padded with "!" as SD 2.x's is
shutil.copytree(os.path.join(src, "tokenizer"), os.path.join(sd, "tokenizer"), dirs_exist_ok=True)
for f in ("special_tokens_map.json", "tokenizer_config.json"):
    p = os.path.join(sd, "tokenizer", f)
    j = json.load(open(p))
    j["pad_token"] = "!"
    json.dump(j, open(p, "w"), indent=2)
tok = CLIPTokenizer.from_pretrained(os.path.join(sd, "tokenizer"))
torch.set_default_dtype(torch.float64)
assert tok.pad_token_id == 0

# ---- text encoder: exact GELU (OpenCLIP ViT-H's), 3 layers
tcfg = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", projection_dim=32,
                      layer_norm_eps=1e-5)
te = CLIPTextModel(tcfg).eval()
randomise(te)
te.float().save_pretrained(os.path.join(sd, "text_encoder"), safe_serialization=True)
te.double()

# ---- UNet: SD 2.x's block structure, Linear projections, 2/4/4/4 heads
unet = UNet2DConditionModel(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64, 64),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=32, attention_head_dim=(2, 4, 4, 4), norm_num_groups=16, use_linear_projection=True,
    upcast_attention=True).eval()
randomise(unet)
unet.float().save_pretrained(os.path.join(sd, "unet"), safe_serialization=True)
unet.double()

# ---- VAE (SD 2.x's is SD 1.x's) and a v-prediction schedule
shutil.copytree(os.path.join(src, "vae"), os.path.join(sd, "vae"), dirs_exist_ok=True)
vae = AutoencoderKL.from_pretrained(os.path.join(sd, "vae")).double().eval()
sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                      timestep_spacing="leading")
sched.save_pretrained(os.path.join(sd, "scheduler"))
json.dump({"_class_name": "StableDiffusionPipeline",
           "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
           "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
           "vae": ["diffusers", "AutoencoderKL"]}, open(os.path.join(sd, "model_index.json"), "w"), indent=2)

prompts = ["a photograph of an astronaut riding a horse", "a watercolor painting of a red fox in the snow"]
ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
uids = tok(["", ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
assert (uids[0, 2:] == 0).all()

# ---- text encoder golden: last_hidden_state and every gradient of sum(out * R)
h = te(ids).last_hidden_state
R = rnd(*h.shape)
te.zero_grad()
(h * R).sum().backward()
save_file(f32({"input_ids": ids.int(), "last_hidden_state": h, "loss_weights": R,
               **grads(te, "" if hasattr(te, "text_model") else "text_model.")}), os.path.join(gold, "text_encoder.safetensors"),
          metadata={"loss": "sum(last_hidden_state * loss_weights)", "grads": "grad.<param name> of that loss"})

# ---- UNet golden
sample = rnd(4, 4, 16, 16).requires_grad_()
ehs = rnd(4, 77, 32).requires_grad_()
t = torch.tensor([981, 1, 500, 500])
o = unet(sample, t, ehs).sample
R = rnd(*o.shape)
unet.zero_grad()
(o * R).sum().backward()
save_file(f32({"sample": sample, "timestep": t, "encoder_hidden_states": ehs, "out": o, "loss_weights": R,
               "grad.sample": sample.grad, "grad.encoder_hidden_states": ehs.grad, **grads(unet)}),
          os.path.join(gold, "unet.safetensors"), metadata={"loss": "sum(out * loss_weights)"})

# ---- the whole path: [uncond; cond] context, 4 guided DDIM steps (eta 0), VAE decode
with torch.no_grad():
    ctx = torch.cat([te(uids).last_hidden_state, te(ids).last_hidden_state])
    lat = rnd(2, 4, 16, 16)
    rec = {"input_ids": ids.int(), "uncond_input_ids": uids.int(), "init_latents": lat.clone()}
    sched.set_timesteps(4)
    for i, ts in enumerate(sched.timesteps):
        v_u, v_c = unet(torch.cat([lat, lat]), ts, ctx).sample.chunk(2)
        lat = sched.step(v_u + 7.5 * (v_c - v_u), ts, lat, eta=0.0).prev_sample
        rec[f"latents_after_step{i}"] = lat.clone()
    rec["image"] = vae.decode(lat / vae.config.scaling_factor).sample
    rec["timesteps"] = sched.timesteps.clone()
    # encode_prompt with clip_skip=1: the penultimate layer through the final LayerNorm. diffusers' own call
    # reads text_encoder.text_model.final_layer_norm, which transformers 5's CLIPTextModel no longer has;
    # then its two lines are done here
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    try:
        rec["prompt_embeds_clip_skip1"] = pipe.encode_prompt(prompts, "cpu", 1, False, clip_skip=1)[0]
    except AttributeError:
        final_ln = te.text_model.final_layer_norm if hasattr(te, "text_model") else te.final_layer_norm
        rec["prompt_embeds_clip_skip1"] = final_ln(te(ids, output_hidden_states=True).hidden_states[-(1 + 1)])
save_file(f32(rec), os.path.join(gold, "pipeline.safetensors"),
          metadata={"num_inference_steps": "4", "eta": "0", "cfg_batch_order": "uncond then cond",
                    "guidance_scale": "7.5", "prediction_type": "v_prediction"})
# ---- the DRaFT family's reward gradients through the v-prediction sampler (golden/draft.safetensors)
ctx = ctx.detach()
save_file(f32(draft_golden(unet, vae, sched, ctx, lambda rows: {}, rnd(2, 4, 16, 16))),
          os.path.join(gold, "draft.safetensors"), metadata={"lora": "rank 2, scale 1", "steps": "4", "guidance": "7.5"})

# ---- the real SD 2.1 shapes, without the weights: stabilityai/stable-diffusion-2-1's UNet and text encoder
# configs, and every parameter name and shape diffusers / transformers build from them (on the meta device)
unet21 = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
          "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 1024,
          "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
          "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
          "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": None,
          "only_cross_attention": False, "out_channels": 4, "sample_size": 96,
          "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "use_linear_projection": True,
          "upcast_attention": True}
text21 = {"architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
          "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": 1024, "initializer_factor": 1.0,
          "initializer_range": 0.02, "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
          "model_type": "clip_text_model", "num_attention_heads": 16, "num_hidden_layers": 23, "pad_token_id": 1,
          "projection_dim": 512, "torch_dtype": "float32", "vocab_size": 49408}
os.makedirs(os.path.join(out, "sd21"), exist_ok=True)
json.dump(unet21, open(os.path.join(out, "sd21", "unet.config.json"), "w"), indent=2)
json.dump(text21, open(os.path.join(out, "sd21", "text_encoder.config.json"), "w"), indent=2)
with torch.device("meta"):
    u21 = UNet2DConditionModel(**{k: v for k, v in unet21.items() if not k.startswith("_")})
    t21 = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in text21.items() if k != "architectures"}))


def manifest(m, prefix=""):
    return {prefix + k: list(v.shape) for k, v in m.state_dict().items() if not k.endswith("position_ids")}


man = {"parameters": {"unet": manifest(u21),
                      "text_encoder": manifest(t21, "" if hasattr(t21, "text_model") else "text_model.")}}
man["parameter_counts"] = {k: sum(int(torch.tensor(s).prod()) for s in v.values()) for k, v in man["parameters"].items()}
json.dump(man, open(os.path.join(out, "sd21", "sd21-manifest.json"), "w"), indent=1)
print("wrote", out, man["parameter_counts"])
