#!/usr/bin/env python3
"""Writes a Stable Diffusion 1.5 model of the real architecture with random
weights (diffusers layout), for benchmarks: no download needed.
Needs: torch, diffusers, transformers (pip). Usage: make_random_sd15.py OUT_DIR"""
import os, shutil, sys
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizerFast

out = sys.argv[1]
tokenizer_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fixtures", "clip-tokenizer")
tokenizer_dir = os.environ.get("ATELIER_TOKENIZER", tokenizer_dir)
torch.manual_seed(0)
# SD 1.5's own configs (runwayml/stable-diffusion-v1-5), for 256 px.
unet = UNet2DConditionModel(sample_size=32, cross_attention_dim=768, attention_head_dim=8,
                            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    sample_size=256)
text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                      set_alpha_to_one=False, steps_offset=1)
tok = CLIPTokenizerFast.from_pretrained(tokenizer_dir)
pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
pipe.save_pretrained(out, safe_serialization=True)
for f in ("vocab.json", "merges.txt"):
    shutil.copy(os.path.join(tokenizer_dir, f), os.path.join(out, "tokenizer"))
print(out)
