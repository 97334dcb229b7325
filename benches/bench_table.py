#!/usr/bin/env python3
"""Joins `atelier bench --json` and pytorch_bench.py lines (same arch, size,
dtype) into a markdown table with the ratios. Usage: bench_table.py A.jsonl P.jsonl"""
import json, sys

def rows(path):
    try:
        return [json.loads(l) for l in open(path) if l.startswith("{")]
    except FileNotFoundError:
        return []

ours, theirs = rows(sys.argv[1]), rows(sys.argv[2])
key = lambda r: (r["arch"], r["width"], r["height"], r["dtype"].replace("float", "f"))
ref = {key(r): r for r in theirs}
print(f"device: {ours[0]['device'] if ours else '?'} (atelier) / {theirs[0]['device'] if theirs else '?'} (PyTorch {theirs[0]['torch'] if theirs else '?'})")
print("| model, size, dtype | UNet ms/step atelier | PyTorch | ratio | img2img s atelier | PyTorch | ratio "
      "| VAE enc/dec ms atelier | PyTorch | peak MiB atelier | PyTorch | rerun before 1st step ms (seed/prompt/strength) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in ours:
    p = ref.get(key(r))
    f = lambda k, fmt: fmt.format(p[k]) if p else "-"
    ratio = lambda k: f"{r[k] / p[k]:.2f}" if p else "-"
    rr = r["rerun_first_step_ms"]
    print(f"| {r['arch']}, {r['width']}x{r['height']}, {r['dtype']} | {r['unet_step_ms']:.1f} | {f('unet_step_ms', '{:.1f}')} "
          f"| {ratio('unet_step_ms')} | {r['img2img_s']:.2f} | {f('img2img_s', '{:.2f}')} | {ratio('img2img_s')} "
          f"| {r['vae_encode_ms']:.0f}/{r['vae_decode_ms']:.0f} | {f('vae_encode_ms', '{:.0f}')}/{f('vae_decode_ms', '{:.0f}')} "
          f"| {r['peak_memory_mib']:.0f} | {f('peak_memory_mib', '{:.0f}')} "
          f"| {rr['seed_ms']:.0f}/{rr['prompt_ms']:.0f}/{rr['strength_ms']:.0f} |")
print("ratio = atelier / PyTorch (below 1: atelier faster)")
