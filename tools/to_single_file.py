#!/usr/bin/env python3
"""Write a diffusers-layout Stable Diffusion model (1.x, 2.x or XL) as one
single-file checkpoint with the original LDM key names, the way A1111,
ComfyUI and civitai ship models: model.diffusion_model.* (UNet),
first_stage_model.* (VAE), cond_stage_model.transformer.* (SD 1.x CLIP),
cond_stage_model.model.* (SD 2.x OpenCLIP, fused q/k/v), or
conditioner.embedders.{0,1}.* (SDXL). Tensors keep their dtype.

--check (needs torch + diffusers) maps the written UNet and VAE back with
diffusers' own LDM converters and compares every tensor with the originals,
so this mapping is checked against an independent implementation.

Needs numpy and safetensors. Usage: to_single_file.py MODEL_DIR OUT.safetensors [--check]"""
import glob, json, os, sys
import numpy as np
from safetensors.numpy import load_file, save_file


def load_part(model, part):
    files = sorted(glob.glob(os.path.join(model, part, "*.safetensors")))
    full = [f for f in files if ".fp16." not in f]
    tensors = {}
    for f in (full or files):
        tensors.update(load_file(f))
    return tensors


def config(model, part):
    return json.load(open(os.path.join(model, part, "config.json")))


RESNET = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
          ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")]


def rename(tail, pairs):
    for a, b in pairs:
        if tail.startswith(a):
            return b + tail[len(a):]
    return tail


def unet_key(name, layers, cross):
    per = layers + 1
    fixed = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
             "time_embedding.linear_2.": "time_embed.2.", "add_embedding.linear_1.": "label_emb.0.0.",
             "add_embedding.linear_2.": "label_emb.0.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
             "mid_block.attentions.0.": "middle_block.1."}
    for a, b in fixed.items():
        if name.startswith(a):
            return b + name[len(a):]
    for i in (0, 1):
        a = f"mid_block.resnets.{i}."
        if name.startswith(a):
            return f"middle_block.{2 * i}." + rename(name[len(a):], RESNET)
    p = name.split(".")
    kind, b = p[0], int(p[1])
    if kind == "down_blocks":
        if p[2] == "downsamplers":
            return f"input_blocks.{1 + b * per + layers}.0.op." + ".".join(p[5:])
        l = int(p[3])
        idx = 1 + b * per + l
        if p[2] == "resnets":
            return f"input_blocks.{idx}.0." + rename(".".join(p[4:]), RESNET)
        return f"input_blocks.{idx}.1." + ".".join(p[4:])
    if kind == "up_blocks":
        if p[2] == "upsamplers":
            return f"output_blocks.{b * per + layers}.{2 if cross[b] else 1}.conv." + ".".join(p[5:])
        l = int(p[3])
        idx = b * per + l
        if p[2] == "resnets":
            return f"output_blocks.{idx}.0." + rename(".".join(p[4:]), RESNET)
        return f"output_blocks.{idx}.1." + ".".join(p[4:])
    raise KeyError(name)


def vae_key(name, levels):
    coder, rest = name.split(".", 1)
    if coder in ("quant_conv", "post_quant_conv"):
        return name, False
    shortcut = [("conv_shortcut.", "nin_shortcut.")]
    if rest.startswith("conv_norm_out."):
        return f"{coder}.norm_out." + rest[len("conv_norm_out."):], False
    for i, ldm in ((0, "block_1"), (1, "block_2")):
        a = f"mid_block.resnets.{i}."
        if rest.startswith(a):
            return f"{coder}.mid.{ldm}." + rename(rest[len(a):], shortcut), False
    a = "mid_block.attentions.0."
    if rest.startswith(a):
        module, param = rest[len(a):].rsplit(".", 1)
        ldm = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[module]
        return f"{coder}.mid.attn_1.{ldm}.{param}", module != "group_norm" and param == "weight"
    p = rest.split(".")
    if p[0] == "down_blocks":
        if p[2] == "downsamplers":
            return f"{coder}.down.{p[1]}.downsample." + ".".join(p[4:]), False
        return f"{coder}.down.{p[1]}.block.{p[3]}." + rename(".".join(p[4:]), shortcut), False
    if p[0] == "up_blocks":
        level = levels - 1 - int(p[1])
        if p[2] == "upsamplers":
            return f"{coder}.up.{level}.upsample." + ".".join(p[4:]), False
        return f"{coder}.up.{level}.block.{p[3]}." + rename(".".join(p[4:]), shortcut), False
    return name, False  # conv_in, conv_out


def clip_hf(tensors, prefix):
    out = {}
    for k, v in tensors.items():
        if k.endswith("position_ids"):
            continue
        k = k if k.startswith("text_model.") else "text_model." + k
        out[prefix + k] = v
    return out


def open_clip(tensors, prefix):
    t = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in tensors.items()}
    out = {prefix + "token_embedding.weight": t["embeddings.token_embedding.weight"],
           prefix + "positional_embedding": t["embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": t["final_layer_norm.weight"], prefix + "ln_final.bias": t["final_layer_norm.bias"]}
    if "text_projection.weight" in t:
        out[prefix + "text_projection"] = np.ascontiguousarray(t["text_projection.weight"].T)
    layers = sorted({int(k.split(".")[2]) for k in t if k.startswith("encoder.layers.")})
    pairs = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
             ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[dst + "attn.in_proj_" + param] = np.concatenate(
                [t[f"{src}self_attn.{p}_proj.{param}"] for p in "qkv"], axis=0)
        for k, v in t.items():
            if k.startswith(src) and ".self_attn." not in k.replace("self_attn.out_proj", ""):
                out[dst + rename(k[len(src):], pairs)] = v
    return out


def convert(model):
    unet_cfg, vae_cfg = config(model, "unet"), config(model, "vae")
    layers = unet_cfg.get("layers_per_block", 2)
    cross = [t.startswith("CrossAttn") for t in unet_cfg["up_block_types"]]
    out = {}
    for k, v in load_part(model, "unet").items():
        out["model.diffusion_model." + unet_key(k, layers, cross)] = v
    for k, v in load_part(model, "vae").items():
        name, squeeze = vae_key(k, len(vae_cfg["block_out_channels"]))
        out["first_stage_model." + name] = v.reshape(v.shape + (1, 1)) if squeeze else v
    text = load_part(model, "text_encoder")
    xl = os.path.isdir(os.path.join(model, "text_encoder_2"))
    gelu = config(model, "text_encoder").get("hidden_act") == "gelu"
    if xl:
        out.update(clip_hf(text, "conditioner.embedders.0.transformer."))
        out.update(open_clip(load_part(model, "text_encoder_2"), "conditioner.embedders.1.model."))
    elif gelu:
        out.update(open_clip(text, "cond_stage_model.model."))
    else:
        out.update(clip_hf(text, "cond_stage_model.transformer."))
    return out


def check(model, out_path):
    """Maps the written UNet and VAE back with diffusers' own converters."""
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from safetensors.torch import load_file as load_torch
    ldm = load_torch(out_path)
    for part, fn in (("unet", convert_ldm_unet_checkpoint), ("vae", convert_ldm_vae_checkpoint)):
        back = fn(ldm, config(model, part))
        orig = {k: torch.from_numpy(v) for k, v in load_part(model, part).items()}
        if set(back) != set(orig):
            raise SystemExit(f"{part}: diffusers maps back {len(back)} keys, the model has {len(orig)}: "
                             f"{sorted(set(back) ^ set(orig))[:10]}")
        bad = [k for k in orig if not torch.equal(back[k].reshape(orig[k].shape), orig[k])]
        if bad:
            raise SystemExit(f"{part}: {len(bad)} tensors differ after diffusers' conversion, e.g. {bad[:5]}")
        print(f"{part}: {len(orig)} tensors map back exactly through diffusers' converter")


if __name__ == "__main__":
    model, out_path = sys.argv[1], sys.argv[2]
    save_file(convert(model), out_path, metadata={"format": "pt"})
    print(out_path)
    if "--check" in sys.argv[3:]:
        check(model, out_path)
