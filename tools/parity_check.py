#!/usr/bin/env python3
"""Runs one parity case through the atelier binary on any device and dtype
and prints how far it lands from diffusers' f32 output (one JSON line).
Used where cargo is not available (a GPU machine with the binary carried over).
Needs numpy and safetensors. Usage: parity_check.py ATELIER CASE_DIR DEVICE DTYPE"""
import json, os, subprocess, sys, tempfile
import numpy as np
from safetensors.numpy import load_file

atelier, case_dir, device, dtype = sys.argv[1:5]
case = json.load(open(os.path.join(case_dir, "case.json")))
with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "out.safetensors")
    cmd = [atelier, "gen", "--model", os.path.join(case_dir, "model"), "--source", os.path.join(case_dir, "source.png"),
           "--prompt", case["prompt"], "--negative", case["negative_prompt"], "--strength", str(case["strength"]),
           "--steps", str(case["steps"]), "--guidance", str(case["guidance"]), "--width", str(case["width"]),
           "--height", str(case["height"]), "--noise", os.path.join(case_dir, "noise.safetensors"),
           "--device", device, "--dtype", dtype, "--out", out, "--quiet"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        print(json.dumps({"case": os.path.basename(case_dir), "device": device, "dtype": dtype, "error": run.stderr[-500:]}))
        sys.exit(1)
    got = load_file(out)["image"]
want = load_file(os.path.join(case_dir, "expected.safetensors"))["image"]
diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
print(json.dumps({"case": os.path.basename(case_dir), "device": device, "dtype": dtype,
                  "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}))
