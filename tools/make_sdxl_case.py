#!/usr/bin/env python3
"""Make one SDXL img2img parity case in the format of ../shared/parity (see its
README.md): a small random-weight model of the SDXL architecture (two text
encoders, the second with a projection; a UNet with added text/time
conditioning; a VAE with SDXL's scaling factor) in diffusers' folder layout, a
source image, the initial noise, and what diffusers'
StableDiffusionXLImg2ImgPipeline makes of them.

An empty --negative is passed as None, so `force_zeros_for_empty_prompt` zeroes
the unconditional input, as atelier does for an empty negative prompt.

Needs: torch, diffusers, transformers, safetensors, pillow (pip).
Usage: make_sdxl_case.py OUT_DIR [--scheduler euler|ddim|dpmpp2m] [--width 128 --height 128
       --steps 10 --strength 0.6 --guidance 5.0 --seed 0 --prompt "..." --negative "..." --tokenizer DIR]
"""
import argparse, json, os, shutil
import numpy as np, torch
from PIL import Image
from safetensors.torch import save_file
import diffusers
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel)
from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as i2i
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizerFast

here = os.path.dirname(os.path.abspath(__file__))
p = argparse.ArgumentParser()
p.add_argument("out"); p.add_argument("--scheduler", default="euler")
p.add_argument("--width", type=int, default=128); p.add_argument("--height", type=int, default=128)
p.add_argument("--steps", type=int, default=10); p.add_argument("--strength", type=float, default=0.6)
p.add_argument("--guidance", type=float, default=5.0); p.add_argument("--seed", type=int, default=0)
p.add_argument("--prompt", default="a red fox in the snow, oil painting")
p.add_argument("--negative", default="blurry")
p.add_argument("--tokenizer", default=os.path.join(here, "..", "..", "shared", "fixtures", "clip-tokenizer"))
a = p.parse_args()
torch.manual_seed(a.seed)

# SDXL's layout at toy widths: no attention at the first level, deeper
# transformers further down, linear projections, heads of 16 channels.
pooled_dim, time_dim = 32, 8
unet = UNet2DConditionModel(
    sample_size=a.height // 8, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 4), use_linear_projection=True,
    cross_attention_dim=32 + 48, norm_num_groups=8,
    addition_embed_type="text_time", addition_time_embed_dim=time_dim,
    projection_class_embeddings_input_dim=pooled_dim + 6 * time_dim)
vae = AutoencoderKL(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
    block_out_channels=(16, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=a.height, scaling_factor=0.13025, force_upcast=True)
clip = dict(intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=49408,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
text = CLIPTextModel(CLIPTextConfig(hidden_size=32, hidden_act="quick_gelu", projection_dim=32, **clip))
# SDXL's second encoder config keeps the legacy eos_token_id 2 (pooling at the argmax id).
clip2 = dict(clip, eos_token_id=2, bos_token_id=0, pad_token_id=1)
text_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=48, hidden_act="gelu", projection_dim=pooled_dim, **clip2))
with torch.no_grad():
    for m in (unet, vae, text, text_2):
        for n, w in m.named_parameters():
            if w.dim() > 1:
                w.add_(torch.randn_like(w) * 0.02)
            # Weights are stored as the fp16 variant to halve the case's size;
            # rounding them first keeps the f32 reference exact for them.
            w.copy_(w.half().float())
tok = CLIPTokenizerFast.from_pretrained(a.tokenizer, pad_token="<|endoftext|>")
tok_2 = CLIPTokenizerFast.from_pretrained(a.tokenizer, pad_token="!")
common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
              steps_offset=1, prediction_type="epsilon")
sched = {
    "euler": lambda: EulerDiscreteScheduler(timestep_spacing="leading", interpolation_type="linear", **common),
    "ddim": lambda: DDIMScheduler(clip_sample=False, set_alpha_to_one=False, timestep_spacing="leading", **common),
    "dpmpp2m": lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **common),
}[a.scheduler]()
pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tok,
                                        tokenizer_2=tok_2, unet=unet, scheduler=sched, requires_aesthetics_score=False,
                                        force_zeros_for_empty_prompt=True, add_watermarker=False)

yy, xx = np.mgrid[0:a.height, 0:a.width] / max(a.width, a.height)
src = np.stack([0.5 + 0.5 * np.sin(6 * xx), 0.5 + 0.5 * np.cos(5 * yy), ((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.08) * 0.9], -1)
src_img = Image.fromarray((src * 255).round().astype(np.uint8))

g = torch.Generator().manual_seed(a.seed + 1)
init_noise = torch.randn((1, 4, a.height // 8, a.width // 8), generator=g)
i2i.randn_tensor = lambda shape, **kw: init_noise.to(kw.get("dtype") or torch.float32).reshape(shape)
orig_retrieve = i2i.retrieve_latents
i2i.retrieve_latents = lambda enc, generator=None, sample_mode="sample": orig_retrieve(enc, sample_mode="argmax")
with torch.no_grad():
    out = pipe(prompt=a.prompt, negative_prompt=a.negative or None, image=src_img, strength=a.strength,
               num_inference_steps=a.steps, guidance_scale=a.guidance, output_type="np").images[0]

os.makedirs(a.out, exist_ok=True)
shutil.rmtree(os.path.join(a.out, "model"), ignore_errors=True)
pipe.to(torch.float16).save_pretrained(os.path.join(a.out, "model"), safe_serialization=True, variant="fp16")
for sub in ("tokenizer", "tokenizer_2"):
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(a.tokenizer, f), os.path.join(a.out, "model", sub))
    os.remove(os.path.join(a.out, "model", sub, "tokenizer.json"))  # vocab + merges, as SDXL repos ship
src_img.save(os.path.join(a.out, "source.png"))
save_file({"init_noise": init_noise.contiguous()}, os.path.join(a.out, "noise.safetensors"))
save_file({"image": torch.from_numpy(out).permute(2, 0, 1).contiguous().float()}, os.path.join(a.out, "expected.safetensors"))
Image.fromarray((out * 255).round().astype(np.uint8)).save(os.path.join(a.out, "expected.png"))
case = dict(arch="sdxl", scheduler=a.scheduler, prompt=a.prompt, negative_prompt=a.negative, strength=a.strength,
            steps=a.steps, guidance=a.guidance, width=a.width, height=a.height,
            denoising_steps_run=min(int(a.steps * a.strength), a.steps),
            diffusers=diffusers.__version__, torch=torch.__version__)
json.dump(case, open(os.path.join(a.out, "case.json"), "w"), indent=2)
print(json.dumps(case))
