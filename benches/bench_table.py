#!/usr/bin/env python3
"""Joins `atelier bench --json` and pytorch_bench.py lines (same arch, size,
dtype and round) into a markdown table with the ratios; where a row ran in
several rounds (compare.sh's ROUNDS), one line more gives the median of its
rounds' ratios. Usage: bench_table.py A.jsonl P.jsonl"""
import json, statistics, sys

def rows(path):
    try:
        return [json.loads(l) for l in open(path) if l.startswith("{")]
    except FileNotFoundError:
        return []

ours, theirs = rows(sys.argv[1]), rows(sys.argv[2])
model = lambda r: (r["arch"], r["width"], r["height"], r["dtype"].replace("float", "f"))
key = lambda r: model(r) + (r.get("round", 1),)
ref = {key(r): r for r in theirs}
print(f"device: {ours[0]['device'] if ours else '?'} (atelier) / {theirs[0]['device'] if theirs else '?'} (PyTorch {theirs[0]['torch'] if theirs else '?'})")
print("| model, size, dtype | UNet ms/step atelier | PyTorch | ratio | img2img s atelier | PyTorch | ratio "
      "| VAE enc/dec ms atelier | PyTorch | peak MiB atelier | PyTorch | rerun before 1st step ms (seed/prompt/strength) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
# Per model: the (step, img2img) ratios of each round that has both sides.
ratios = {}
rounds = {}
for r in ours:
    rounds.setdefault(model(r), set()).add(r.get("round", 1))
for r in ours:
    p = ref.get(key(r))
    f = lambda k, fmt: fmt.format(p[k]) if p else "-"
    ratio = lambda k: f"{r[k] / p[k]:.2f}" if p else "-"
    rr = r["rerun_first_step_ms"]
    label = f"{r['arch']}, {r['width']}x{r['height']}, {r['dtype']}"
    if len(rounds[model(r)]) > 1:
        label += f", round {r.get('round', 1)}"
    print(f"| {label} | {r['unet_step_ms']:.1f} | {f('unet_step_ms', '{:.1f}')} "
          f"| {ratio('unet_step_ms')} | {r['img2img_s']:.2f} | {f('img2img_s', '{:.2f}')} | {ratio('img2img_s')} "
          f"| {r['vae_encode_ms']:.0f}/{r['vae_decode_ms']:.0f} | {f('vae_encode_ms', '{:.0f}')}/{f('vae_decode_ms', '{:.0f}')} "
          f"| {r['peak_memory_mib']:.0f} | {f('peak_memory_mib', '{:.0f}')} "
          f"| {rr['seed_ms']:.0f}/{rr['prompt_ms']:.0f}/{rr['strength_ms']:.0f} |")
    if p:
        ratios.setdefault(model(r), []).append(
            (r["unet_step_ms"] / p["unet_step_ms"], r["img2img_s"] / p["img2img_s"]))
for (arch, w, h, dtype), rs in ratios.items():
    if len(rs) > 1:
        step = statistics.median(s for s, _ in rs)
        whole = statistics.median(i for _, i in rs)
        print(f"| {arch}, {w}x{h}, {dtype}, median of {len(rs)} rounds | | | {step:.2f} | | | {whole:.2f} | | | | | |")
print("ratio = atelier / PyTorch (below 1: atelier faster)")
