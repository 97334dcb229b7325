#!/usr/bin/env python3
"""The same workload as `atelier bench`, in PyTorch + diffusers: the networks
built from the configs `atelier bench --write-configs` writes (random weights,
same shapes), the same steps, strength, guidance and size. Prints one JSON
line with the fields `atelier bench --json` prints.

Needs torch, diffusers, transformers; a CLIP tokenizer folder (vocab.json + merges.txt).
Usage: pytorch_bench.py CONFIGS TOKENIZER --arch sd15 --size 512 --device cuda --dtype f16
       [--steps 30 --strength 0.6 --guidance 7.5 --repeats 5 --compile]"""
import argparse, json, os, time
import numpy as np, torch
from PIL import Image
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline,
                       StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

p = argparse.ArgumentParser()
p.add_argument("configs"); p.add_argument("tokenizer"); p.add_argument("--arch", default="sd15")
p.add_argument("--size", type=int, default=512); p.add_argument("--device", default="cuda")
p.add_argument("--dtype", default="f16"); p.add_argument("--steps", type=int, default=30)
p.add_argument("--strength", type=float, default=0.6); p.add_argument("--guidance", type=float, default=7.5)
p.add_argument("--repeats", type=int, default=5); p.add_argument("--compile", action="store_true")
a = p.parse_args()
dtype = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[a.dtype]
dev = torch.device(a.device)
cuda = dev.type == "cuda"
load = lambda part, name="config.json": json.load(open(os.path.join(a.configs, part, name)))

def sync():
    if cuda:
        torch.cuda.synchronize()

peak = 0
def sample_memory():
    global peak
    if cuda:
        free, total = torch.cuda.mem_get_info()
        peak = max(peak, total - free)

def median_ms(f):
    f(); sync()
    times = []
    for _ in range(max(1, a.repeats)):
        t = time.perf_counter(); f(); sync(); times.append((time.perf_counter() - t) * 1e3)
        sample_memory()
    return sorted(times)[len(times) // 2]

def clip(part, cls):
    cfg = {k: v for k, v in load(part).items() if k not in ("architectures", "model_type")}
    return cls(CLIPTextConfig(**cfg))

started = time.perf_counter()
with torch.device(dev):  # initialise on the device: no host-side init of billions of weights
    unet = UNet2DConditionModel.from_config(load("unet"))
    vae = AutoencoderKL.from_config(load("vae"))
    xl = a.arch == "sdxl"
    text = clip("text_encoder", CLIPTextModel)
    text_2 = clip("text_encoder_2", CLIPTextModelWithProjection) if xl else None
for m in (unet, vae, text, text_2):
    if m is not None:
        m.to(dev, dtype).eval()
sched = EulerDiscreteScheduler.from_config(load("scheduler", "scheduler_config.json"))
tok = CLIPTokenizer(os.path.join(a.tokenizer, "vocab.json"), os.path.join(a.tokenizer, "merges.txt"), model_max_length=77)
if xl:
    tok_2 = CLIPTokenizer(os.path.join(a.tokenizer, "vocab.json"), os.path.join(a.tokenizer, "merges.txt"), pad_token="!", model_max_length=77)
    pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tok,
                                            tokenizer_2=tok_2, unet=unet, scheduler=sched,
                                            requires_aesthetics_score=False, add_watermarker=False)
else:
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
if a.compile:
    pipe.unet = torch.compile(pipe.unet)
sync()
build_s = time.perf_counter() - started
sample_memory()

s = a.size
yy, xx = np.mgrid[0:s, 0:s] / s
src = Image.fromarray((np.stack([xx, yy, 0.5 + 0 * xx], -1) * 255).astype(np.uint8))
with torch.inference_mode():
    lat = torch.randn(2, 4, s // 8, s // 8, device=dev, dtype=dtype)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, device=dev, dtype=dtype)
    kw = {}
    if xl:
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 1280, device=dev, dtype=dtype),
                                   "time_ids": torch.tensor([[s, s, 0, 0, s, s]] * 2, device=dev, dtype=dtype)}
    compile_started = time.perf_counter()
    unet(lat, 500, encoder_hidden_states=ctx, **kw); sync()
    first_call_s = time.perf_counter() - compile_started
    unet_ms = median_ms(lambda: pipe.unet(lat, 500, encoder_hidden_states=ctx, **kw))
    pixels = torch.rand(1, 3, s, s, device=dev, dtype=dtype) * 2 - 1
    vae_dtype = torch.float32 if xl and vae.config.force_upcast and dtype == torch.float16 else dtype
    vae.to(vae_dtype)
    enc_ms = median_ms(lambda: vae.encode(pixels.to(vae_dtype)).latent_dist.mean)
    dec_ms = median_ms(lambda: vae.decode(lat[:1].to(vae_dtype)).sample)
    vae.to(dtype)
    run = lambda: pipe(prompt="a red fox in the snow, oil painting", negative_prompt="blurry", image=src,
                       strength=a.strength, num_inference_steps=a.steps, guidance_scale=a.guidance,
                       generator=torch.Generator(dev).manual_seed(0))
    img2img_ms = median_ms(run)

if not cuda:
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
calls = min(int(a.steps * a.strength), a.steps)
print(json.dumps({"impl": "pytorch" + ("+compile" if a.compile else ""), "arch": a.arch,
                  "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
                  "dtype": a.dtype, "width": s, "height": s, "build_s": build_s, "first_call_s": first_call_s,
                  "unet_step_ms": unet_ms, "vae_encode_ms": enc_ms, "vae_decode_ms": dec_ms,
                  "img2img_s": img2img_ms / 1e3, "unet_calls": calls, "peak_memory_mib": peak / 2**20,
                  "torch": torch.__version__}))
