#!/usr/bin/env bash
# atelier vs PyTorch + diffusers, same machine, same run: for each row,
# `atelier bench` and benches/pytorch_bench.py build the same architecture
# with random weights and time the same work; then one table with the ratios.
# With ROUNDS=N the pairs run N times, alternating (atelier, PyTorch,
# atelier, ...), and the table adds each row's median ratio over the rounds:
# this machine's speed drifts between runs, and alternating puts both sides
# in each spell.
#
#   benches/compare.sh                                   CPU: SD 1.5 at 256 px, f32
#   ROWS="sd15:512:f16 sdxl:1024:f16" DEVICE=cuda benches/compare.sh
#
# Env: ATELIER (the binary; default target/release/atelier), PYTHON (with torch,
# diffusers, transformers), TOKENIZER (a CLIP vocab.json + merges.txt folder),
# ROWS (arch:size:dtype ...), DEVICE, STEPS, STRENGTH, REPEATS, ROUNDS, OUT.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ATELIER=${ATELIER:-$here/../target/release/atelier}
PYTHON=${PYTHON:-python3}
TOKENIZER=${TOKENIZER:-$here/../../shared/fixtures/clip-tokenizer}
DEVICE=${DEVICE:-cpu}
ROWS=${ROWS:-sd15:256:f32}
STEPS=${STEPS:-30} STRENGTH=${STRENGTH:-0.6} REPEATS=${REPEATS:-3} ROUNDS=${ROUNDS:-1}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
[ -x "$ATELIER" ] || { echo "build atelier first: cargo build --release (or set ATELIER)" >&2; exit 1; }
# Each result line is tagged with its round, for bench_table.py to pair.
tag() { sed "s/^{/{\"round\": $1, /"; }
for round in $(seq 1 "$ROUNDS"); do
  for row in $ROWS; do
    IFS=: read -r arch size dtype <<<"$row"
    common=(--arch "$arch" --size "$size" --dtype "$dtype" --device "$DEVICE" --steps "$STEPS" --strength "$STRENGTH" --repeats "$REPEATS")
    "$ATELIER" bench "${common[@]}" --json 2>>"$OUT/atelier.err" | grep '^{' | tag "$round" >>"$OUT/atelier.jsonl" \
      || { echo "atelier failed on $row:" >&2; tail -3 "$OUT/atelier.err" >&2; }
    "$ATELIER" bench --arch "$arch" --write-configs "$OUT/configs-$arch" >/dev/null
    "$PYTHON" "$here/pytorch_bench.py" "$OUT/configs-$arch" "$TOKENIZER" "${common[@]}" \
      2>>"$OUT/pytorch.err" | grep '^{' | tag "$round" >>"$OUT/pytorch.jsonl" \
      || { echo "pytorch failed on $row:" >&2; tail -3 "$OUT/pytorch.err" >&2; }
  done
done
"$PYTHON" "$here/bench_table.py" "$OUT/atelier.jsonl" "$OUT/pytorch.jsonl"
echo "raw results: $OUT"
