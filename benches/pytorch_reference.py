#!/usr/bin/env python3
"""Times PyTorch diffusers on the same model and settings as atelier's bench:
one UNet call with classifier-free guidance (batch 2) and a whole img2img.
Prints one JSON line. Usage: pytorch_reference.py MODEL_DIR SIZE STEPS STRENGTH REPEATS"""
import json, sys, time
import numpy as np, torch
from PIL import Image
from diffusers import StableDiffusionImg2ImgPipeline

model, size, steps, strength, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(torch.get_num_threads())
pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
yy, xx = np.mgrid[0:size, 0:size] / size
src = Image.fromarray((np.stack([xx, yy, 0.5 + 0 * xx], -1) * 255).astype(np.uint8))

def median(f):
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]

with torch.no_grad():
    lat = torch.randn(2, 4, size // 8, size // 8)
    ctx = torch.randn(2, 77, 768)
    pipe.unet(lat, 500, encoder_hidden_states=ctx)  # warm-up
    unet_s = median(lambda: pipe.unet(lat, 500, encoder_hidden_states=ctx))
    run = lambda: pipe(prompt="a red fox in the snow", negative_prompt="blurry", image=src, strength=strength,
                       num_inference_steps=steps, guidance_scale=7.5, generator=torch.Generator().manual_seed(0))
    img2img_s = median(run)
print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "unet_step_s": unet_s, "img2img_s": img2img_s}))
