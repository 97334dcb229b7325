//! Multi-head attention fused per block of query rows: scores for a
//! block of rows of one head, their softmax and their product with
//! V, while the scores are still in cache. Heads are read in place from
//! the projections' `[batch, tokens, heads * head_dim]` layout and the
//! result is written in that layout too, so nothing is split, transposed
//! or merged, and the full `[batch, heads, n, m]` score tensor never exists.
//!
//! [`attention_bf16`] (in `attention_bf16.rs`) does the two products in
//! bf16 for `--dtype bf16`.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

pub use super::attention_bf16::attention_bf16;
#[cfg(target_arch = "x86_64")]
use super::f32_products::transpose8;
use super::f32_products::{self, PANEL};
use super::math::exp;
#[cfg(target_arch = "x86_64")]
use super::math::exp_avx512_f32;
use super::{product, vectorized, SharedMut};

/// Query rows per task of the gemm crate's attention: their scores
/// (`QUERY_BLOCK * m` floats, 0.5 MiB at 1024 keys) stay in the core's
/// cache; 32 and 64 were slower, 256 no faster (`cargo bench --bench
/// cpu_kernels`).
const QUERY_BLOCK: usize = 128;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// [`attention_panels`]' block of queries and its scores.
    static PANEL_SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// [`PackedHeads`]' buffers, between [`attention_panels`]' calls (as
    /// large as the largest call's K and V, kept for the thread's life).
    static PACKED: std::cell::Cell<(Vec<f32>, Vec<f32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
    /// [`attend_panel_x86`]'s `outᵀ`.
    #[cfg(target_arch = "x86_64")]
    static OUT_T: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl AttentionShape {
    /// Panics unless q, k and v have this shape's sizes.
    pub(super) fn check(&self, q: &[f32], k: &[f32], v: &[f32]) {
        let dim = self.heads * self.head_dim;
        assert_eq!(q.len(), self.batch * self.queries * dim, "q size");
        assert_eq!(k.len(), self.batch * self.keys * dim, "k size");
        assert_eq!(v.len(), self.batch * self.keys * dim, "v size");
    }
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    /// Query tokens.
    pub queries: usize,
    /// Key and value tokens.
    pub keys: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// `softmax(scale · q kᵀ) v` per head: q `[batch, queries, heads·head_dim]`,
/// k and v `[batch, keys, heads·head_dim]`, all contiguous; the result has
/// q's layout. On [`f32_products`] where they are enabled, else on the gemm
/// crate's products.
pub fn attention(s: &AttentionShape, q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f32> {
    match f32_products::enabled() {
        true => attention_panels(s, q, k, v, scale),
        false => attention_gemm(s, q, k, v, scale),
    }
}

/// [`attention`] on the gemm crate: per block of [`QUERY_BLOCK`] queries,
/// `scale · q kᵀ`, its softmax along the rows, then the product with `v`.
fn attention_gemm(s: &AttentionShape, q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f32> {
    s.check(q, k, v);
    let dim = s.heads * s.head_dim;
    let mut out = vec![0f32; q.len()];
    let out_ptr = SharedMut(out.as_mut_ptr());
    for_each_block(s, QUERY_BLOCK, |b, h, rows| {
        SCORES.with(|scores| {
            let scores = &mut *scores.borrow_mut();
            scores.resize(rows.len() * s.keys, 0.0);
            let head = h * s.head_dim;
            let q_at = (b * s.queries + rows.start) * dim + head;
            let kv_at = b * s.keys * dim + head;
            // SAFETY: the block's rows of q and of the output, and the
            // batch's rows of k and v, for this head's columns, are
            // inside their buffers at row stride `dim`; no other task
            // writes these output rows and columns.
            unsafe {
                // scores = scale · q kᵀ
                product(
                    [rows.len(), s.keys, s.head_dim],
                    (scores.as_mut_ptr(), s.keys, 1),
                    false,
                    (q.as_ptr().add(q_at), dim, 1),
                    (k.as_ptr().add(kv_at), 1, dim),
                    scale,
                    gemm::Parallelism::None,
                );
            }
            let sums: Vec<f32> = scores.chunks_mut(s.keys).map(exp_shifted).collect();
            let out_rows = out_ptr.ptr().wrapping_add(q_at);
            unsafe {
                // out = e^scores v, then each row divided by its sum.
                product(
                    [rows.len(), s.head_dim, s.keys],
                    (out_rows, dim, 1),
                    false,
                    (scores.as_ptr(), s.keys, 1),
                    (v.as_ptr().add(kv_at), dim, 1),
                    1.0,
                    gemm::Parallelism::None,
                );
                for (r, sum) in sums.iter().enumerate() {
                    let row = std::slice::from_raw_parts_mut(out_rows.add(r * dim), s.head_dim);
                    row.iter_mut().for_each(|x| *x /= sum);
                }
            }
        });
    });
    out
}

/// `task(b, h, rows)` for every batch entry `b`, head `h` and block of
/// `block` query rows, in parallel.
pub(super) fn for_each_block(
    s: &AttentionShape,
    block: usize,
    task: impl Fn(usize, usize, Range<usize>) + Sync,
) {
    let blocks = s.queries.div_ceil(block);
    (0..s.batch * s.heads * blocks)
        .into_par_iter()
        .for_each(|i| {
            let (bh, b) = (i / blocks, i % blocks);
            let rows = b * block..((b + 1) * block).min(s.queries);
            task(bh / s.heads, bh % s.heads, rows);
        });
}

/// [`attention`] on [`f32_products`] (AVX-512), shaped as
/// [`attention_bf16`]: per head and block of [`PANEL`] queries packed as
/// one panel, `(scale · q)ᵀ`, one pass over the keys
/// ([`attend_panel_x86`]). Before it made all of a block's `[keys, PANEL]`
/// scores first (512 KiB at 4096 keys, out of L2 with the head's K and V)
/// and took a pass for the max: 2 x 4096 x 4096 (8 heads of 40) 136 ms
/// against 111 now.
fn attention_panels(s: &AttentionShape, q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f32> {
    s.check(q, k, v);
    let dim = s.heads * s.head_dim;
    let mut out = vec![0f32; q.len()];
    let out_ptr = SharedMut(out.as_mut_ptr());
    // The packing's buffers are the calling thread's from one call to the
    // next (taken, so a nested call would make its own): fresh ones
    // fault their pages in at every call, which made a 2 x 64 x 64 (8
    // heads of 160) call 2.5x slower.
    let heads = PackedHeads::new(s, k, v, PACKED.take());
    let blocks = s.queries.div_ceil(PANEL);
    (0..s.batch * s.heads * blocks)
        .into_par_iter()
        .for_each(|i| {
            let (bh, block) = (i / blocks, i % blocks);
            let (b, h) = (bh / s.heads, bh % s.heads);
            let width = PANEL.min(s.queries - block * PANEL);
            let q_at = (b * s.queries + block * PANEL) * dim + h * s.head_dim;
            PANEL_SCRATCH.with_borrow_mut(|(queries, scores)| {
                // (scale · q)ᵀ, [head_dim, PANEL], zeros past the block.
                queries.clear();
                queries.resize(s.head_dim * PANEL, 0.0);
                for j in 0..width {
                    let row = &q[q_at + j * dim..][..s.head_dim];
                    for (p, &x) in row.iter().enumerate() {
                        queries[p * PANEL + j] = scale * x;
                    }
                }
                // SAFETY: the block's rows of head h in the output are
                // `width` rows of head_dim at row stride dim from q_at
                // (checked above), which only this task writes; the
                // products are enabled (AVX-512).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    let out = (out_ptr.ptr().add(q_at), dim, width);
                    attend_panel_x86(&heads.head(b * s.heads + h), queries, scores, out);
                }
                // The f32 products need AVX-512, so elsewhere this is
                // never reached.
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (scores, &heads, out_ptr);
            });
        });
    PACKED.set((heads.keys, heads.values));
    out
}

/// Keys per step of [`attend_panel_x86`]'s pass: their scores (32 KiB)
/// stay in L1 between the two products.
#[cfg(target_arch = "x86_64")]
const KEY_BLOCK: usize = 256;

/// Keys, or dimensions of the values, per step of [`attend_panel_x86`]'s
/// products (the rows of [`f32_products::tile_sums`]).
const ROWS: usize = 8;

/// Every head's keys and values, packed so that [`attend_panel_x86`]'s
/// products read each as one contiguous run: per head, keys in tiles of
/// [`ROWS`] (`[tile][head_dim][ROWS]`, the tile's keys side by side) and
/// values in groups of [`ROWS`] dimensions (`[group][key][ROWS]`), zeros
/// past the last key and the last dimension. Read in place (a head's 40
/// floats in each row of 320 or more) the scores and `Vᵀ P` of a block of
/// 256 keys took their rows from L2 at about 14 and 19 cycles a step,
/// against 11 for operands in L1 (`perf` on an Ice Lake Xeon). Packed,
/// 2 x 1024 x 1024 (8 heads of 40) ran 13% faster there, 10 heads of 64
/// 17%, 2 x 4096 x 4096 about 40%; 77 keys (cross-attention, K and V in
/// L1 either way) 4-8% slower, for the packing.
struct PackedHeads {
    keys: Vec<f32>,
    values: Vec<f32>,
    /// Keys rounded up to [`ROWS`].
    padded: usize,
    head_dim: usize,
    /// Keys.
    count: usize,
}

impl PackedHeads {
    /// Packs k and v (`[batch, keys, heads · head_dim]`) into `buffers`,
    /// whose old contents are all written over.
    fn new(s: &AttentionShape, k: &[f32], v: &[f32], buffers: (Vec<f32>, Vec<f32>)) -> Self {
        let (dim, hd) = (s.heads * s.head_dim, s.head_dim);
        let padded = s.keys.div_ceil(ROWS) * ROWS;
        let groups = hd.div_ceil(ROWS);
        let per_head = padded * groups * ROWS;
        let (mut keys, mut values) = buffers;
        keys.resize(s.batch * s.heads * padded * hd, 0.0);
        values.resize(s.batch * s.heads * per_head, 0.0);
        keys.par_chunks_mut(padded * hd)
            .zip(values.par_chunks_mut(per_head))
            .enumerate()
            .for_each(|(bh, (keys, values))| {
                let (b, h) = (bh / s.heads, bh % s.heads);
                for j in 0..padded {
                    let tile = &mut keys[(j / ROWS) * hd * ROWS..][..hd * ROWS];
                    let slot = |g: usize| (g * padded + j) * ROWS..(g * padded + j + 1) * ROWS;
                    if j >= s.keys {
                        // Zeros past the last key.
                        (0..hd).for_each(|p| tile[p * ROWS + j % ROWS] = 0.0);
                        (0..groups).for_each(|g| values[slot(g)].fill(0.0));
                        continue;
                    }
                    let at = (b * s.keys + j) * dim + h * hd;
                    for (p, &x) in k[at..][..hd].iter().enumerate() {
                        tile[p * ROWS + j % ROWS] = x;
                    }
                    for (g, dims) in v[at..][..hd].chunks(ROWS).enumerate() {
                        // Zeros past the last dimension.
                        let slot = &mut values[slot(g)];
                        slot[..dims.len()].copy_from_slice(dims);
                        slot[dims.len()..].fill(0.0);
                    }
                }
            });
        Self {
            keys,
            values,
            padded,
            head_dim: hd,
            count: s.keys,
        }
    }

    /// Head `bh` (batch entry · heads + head).
    #[cfg(target_arch = "x86_64")]
    fn head(&self, bh: usize) -> KeyValueHead<'_> {
        let groups = self.head_dim.div_ceil(ROWS);
        KeyValueHead {
            keys: &self.keys[bh * self.padded * self.head_dim..][..self.padded * self.head_dim],
            values: &self.values[bh * self.padded * groups * ROWS..][..self.padded * groups * ROWS],
            padded: self.padded,
            count: self.count,
            head_dim: self.head_dim,
        }
    }
}

/// One head's packed keys and values ([`PackedHeads`]).
#[cfg(target_arch = "x86_64")]
struct KeyValueHead<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    padded: usize,
    count: usize,
    head_dim: usize,
}

/// One panel of queries against a head, in one pass over its keys as
/// flash attention does (as [`attention_bf16`], in f32): for each
/// [`KEY_BLOCK`] keys, the scores `K (scale · q)ᵀ` with each query's
/// running max, e^(score - max) in place, and `outᵀ += Vᵀ P`; a block that
/// raises a query's max first scales that query's partial result and sum
/// down. `queries` is `(scale · q)ᵀ` `[head_dim, PANEL]`; `out` is the
/// panel's first row of the head in the output, its row stride and the
/// panel's width.
///
/// # Safety
/// The output's `width` rows of `head_dim` floats lie inside its buffer;
/// the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn attend_panel_x86(
    head: &KeyValueHead,
    queries: &[f32],
    scores: &mut Vec<f32>,
    (out, out_stride, width): (*mut f32, usize, usize),
) {
    use std::arch::x86_64::*;
    const HALF: usize = PANEL / 2;
    assert!(
        queries.len() >= head.head_dim * PANEL,
        "a panel of {} queries' dimensions",
        head.head_dim
    );
    let groups = head.head_dim.div_ceil(ROWS);
    scores.resize(KEY_BLOCK * PANEL, 0.0);
    OUT_T.with_borrow_mut(|out_t| {
        out_t.clear();
        out_t.resize(groups * ROWS * PANEL, 0.0);
        let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); 2];
        let mut sum = [_mm512_setzero_ps(); 2];
        for start in (0..head.count).step_by(KEY_BLOCK) {
            let n = KEY_BLOCK.min(head.count - start);
            let mut block_max = max;
            for tile in 0..n.div_ceil(ROWS) {
                let first = tile * ROWS;
                // The tile's keys side by side (zeros past the last: their
                // scores are set to -inf).
                let keys = &head.keys[(start + first) * head.head_dim..][..ROWS * head.head_dim];
                let a: [*const f32; ROWS] = std::array::from_fn(|r| keys[r..].as_ptr());
                // SAFETY: the tile holds head_dim steps of ROWS keys, the
                // panel head_dim rows of PANEL (asserted above).
                let sums = unsafe {
                    f32_products::tile_sums((a, ROWS), (queries.as_ptr(), PANEL), head.head_dim)
                };
                for (r, row) in sums.iter().enumerate() {
                    for (h, &x) in row.iter().enumerate() {
                        let x = if first + r < n {
                            x
                        } else {
                            _mm512_set1_ps(f32::NEG_INFINITY)
                        };
                        block_max[h] = _mm512_max_ps(block_max[h], x);
                        // SAFETY: row first + r < KEY_BLOCK of scores.
                        unsafe {
                            _mm512_storeu_ps(
                                scores.as_mut_ptr().add((first + r) * PANEL + h * HALF),
                                x,
                            )
                        };
                    }
                }
            }
            // Before the first block the sums and outᵀ are 0.
            let raised =
                (0..2).any(|h| _mm512_cmp_ps_mask::<_CMP_GT_OQ>(block_max[h], max[h]) != 0);
            if start > 0 && raised {
                let factor: [__m512; 2] =
                    std::array::from_fn(|h| exp_avx512_f32(_mm512_sub_ps(max[h], block_max[h])));
                scale_columns(out_t, &mut sum, factor);
            }
            max = block_max;
            for row in scores.chunks_exact_mut(PANEL).take(n) {
                for (h, max) in max.iter().enumerate() {
                    // SAFETY: a row of scores has PANEL floats.
                    unsafe {
                        let at = row.as_mut_ptr().add(h * HALF);
                        let e = exp_avx512_f32(_mm512_sub_ps(_mm512_loadu_ps(at), *max));
                        sum[h] = _mm512_add_ps(sum[h], e);
                        _mm512_storeu_ps(at, e);
                    }
                }
            }
            // outᵀ += Vᵀ[.., block] P, 8 of the head's dimensions at a time.
            for (group, out_rows) in out_t.chunks_exact_mut(ROWS * PANEL).enumerate() {
                // Keys start..start + n of the group's dimensions (zeros
                // past head_dim, never stored).
                let values = &head.values[(group * head.padded + start) * ROWS..][..n * ROWS];
                let a: [*const f32; ROWS] = std::array::from_fn(|r| values[r..].as_ptr());
                // SAFETY: the group holds n steps of ROWS values, scores n
                // rows of PANEL.
                let sums =
                    unsafe { f32_products::tile_sums((a, ROWS), (scores.as_ptr(), PANEL), n) };
                add_tile(out_rows, &sums);
            }
        }
        // SAFETY: the caller's promise.
        unsafe { store_divided(out_t, sum, (out, out_stride, width), head.head_dim) };
    });
}

/// Scales each query's partial `outᵀ` (`[rows, PANEL]`, a column per
/// query) and sum by its lane of `factor`, when a block of keys has raised
/// its max (the one-pass kernels' rescale).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn scale_columns(
    out_t: &mut [f32],
    sum: &mut [std::arch::x86_64::__m512; 2],
    factor: [std::arch::x86_64::__m512; 2],
) {
    use std::arch::x86_64::*;
    for (sum, factor) in sum.iter_mut().zip(&factor) {
        *sum = _mm512_mul_ps(*sum, *factor);
    }
    for row in out_t.chunks_exact_mut(PANEL) {
        for (h, factor) in factor.iter().enumerate() {
            // SAFETY: a row of outᵀ has PANEL floats.
            unsafe {
                let at = row.as_mut_ptr().add(h * PANEL / 2);
                _mm512_storeu_ps(at, _mm512_mul_ps(_mm512_loadu_ps(at), *factor));
            }
        }
    }
}

/// Adds a kernel tile's sums (8 rows of PANEL) into `out_rows` (`[8,
/// PANEL]` of `outᵀ`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn add_tile(out_rows: &mut [f32], sums: &[[std::arch::x86_64::__m512; 2]; 8]) {
    use std::arch::x86_64::*;
    for (row, tile_row) in out_rows.chunks_exact_mut(PANEL).zip(sums) {
        for (h, &x) in tile_row.iter().enumerate() {
            // SAFETY: a row of outᵀ has PANEL floats.
            unsafe {
                let at = row.as_mut_ptr().add(h * PANEL / 2);
                _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), x));
            }
        }
    }
}

/// `out = (outᵀ)ᵀ / sum` for the panel's `width` queries: query j's
/// `head_dim` results at `out + j * stride`. 8 queries by 8 of the head's
/// dimensions at a time, transposed in registers ([`transpose8`]): a
/// float at a time, this was 7% of the bf16 attention in `perf`.
///
/// # Safety
/// Those rows lie inside the output's buffer and no other thread writes
/// them; the CPU has AVX-512F and AVX-512VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
pub(super) unsafe fn store_divided(
    out_t: &[f32],
    sum: [std::arch::x86_64::__m512; 2],
    (out, stride, width): (*mut f32, usize, usize),
    head_dim: usize,
) {
    use std::arch::x86_64::*;
    assert!(
        width <= PANEL && out_t.len() >= head_dim * PANEL,
        "outᵀ of the panel"
    );
    let mut inverse = [0f32; PANEL];
    for (h, &sum) in sum.iter().enumerate() {
        let x = _mm512_div_ps(_mm512_set1_ps(1.0), sum);
        // SAFETY: inverse has PANEL floats.
        unsafe { _mm512_storeu_ps(inverse.as_mut_ptr().add(h * PANEL / 2), x) };
    }
    for j0 in (0..width).step_by(8) {
        // SAFETY: j0 + 8 <= PANEL floats of inverse.
        let inverse = unsafe { _mm256_loadu_ps(inverse.as_ptr().add(j0)) };
        for d0 in (0..head_dim).step_by(8) {
            let dims = (head_dim - d0).min(8);
            // Row r: dimension d0 + r of queries j0..j0 + 8 (zero past the
            // head).
            let rows: [__m256; 8] = std::array::from_fn(|r| match r < dims {
                // SAFETY: row d0 + r < head_dim of outᵀ has PANEL floats,
                // j0 + 8 of them (checked above).
                true => unsafe {
                    _mm256_mul_ps(
                        _mm256_loadu_ps(out_t.as_ptr().add((d0 + r) * PANEL + j0)),
                        inverse,
                    )
                },
                false => _mm256_setzero_ps(),
            });
            let mask = ((1u32 << dims) - 1) as u8;
            for (q, query) in transpose8(rows).into_iter().enumerate().take(width - j0) {
                // SAFETY: query j0 + q < width's dimensions d0..d0 + dims lie
                // inside its head (the caller's promise).
                unsafe { _mm256_mask_storeu_ps(out.add((j0 + q) * stride + d0), mask, query) };
            }
        }
    }
}

/// Replaces a row of scores with e^(score - max) and returns their sum.
/// The max and the sum are kept per lane of [`LANES`] so that both loops
/// vectorise (a single running float sum has to be added in order).
fn exp_shifted(row: &mut [f32]) -> f32 {
    vectorized(
        #[inline(always)]
        || exp_shifted_in_place(row),
    )
}

#[inline(always)]
fn exp_shifted_in_place(row: &mut [f32]) -> f32 {
    const LANES: usize = 16;
    let mut chunks = row.chunks_exact_mut(LANES);
    let mut maxes = [f32::NEG_INFINITY; LANES];
    for chunk in &mut chunks {
        for (m, &x) in maxes.iter_mut().zip(chunk.iter()) {
            *m = m.max(x);
        }
    }
    let tail_max = chunks
        .into_remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let max = maxes.iter().fold(tail_max, |m, &x| m.max(x));

    let mut chunks = row.chunks_exact_mut(LANES);
    let mut sums = [0f32; LANES];
    for chunk in &mut chunks {
        for (s, x) in sums.iter_mut().zip(chunk.iter_mut()) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::super::bf16;
    use super::*;
    use rand::{Rng, SeedableRng};

    fn reference(s: &AttentionShape, q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f32> {
        let dim = s.heads * s.head_dim;
        let mut out = vec![0f32; q.len()];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..s.queries {
                    let qi = &q[(b * s.queries + i) * dim + h * s.head_dim..][..s.head_dim];
                    let scores: Vec<f64> = (0..s.keys)
                        .map(|j| {
                            let kj = &k[(b * s.keys + j) * dim + h * s.head_dim..][..s.head_dim];
                            qi.iter().zip(kj).map(|(a, b)| (a * b) as f64).sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..s.head_dim {
                        let acc: f64 = (0..s.keys)
                            .map(|j| e[j] * v[(b * s.keys + j) * dim + h * s.head_dim + d] as f64)
                            .sum();
                        out[(b * s.queries + i) * dim + h * s.head_dim + d] = (acc / sum) as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_textbook_computation() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // Self-attention with a partial last block, cross-attention with
        // 77 keys, and SD 1.5's head of 40 (not whole tiles of 8 rows or
        // panels of 32) over several blocks.
        for s in [
            AttentionShape {
                batch: 1,
                queries: 100,
                keys: 90,
                heads: 2,
                head_dim: 40,
            },
            AttentionShape {
                batch: 2,
                queries: 70,
                keys: 70,
                heads: 3,
                head_dim: 8,
            },
            AttentionShape {
                batch: 1,
                queries: 130,
                keys: 77,
                heads: 2,
                head_dim: 5,
            },
            // Keys over several blocks of the pass, the last one partial
            // and odd, and the VAE's single head of 512.
            AttentionShape {
                batch: 1,
                queries: 40,
                keys: 601,
                heads: 2,
                head_dim: 40,
            },
            AttentionShape {
                batch: 1,
                queries: 33,
                keys: 300,
                heads: 1,
                head_dim: 512,
            },
        ] {
            let dim = s.heads * s.head_dim;
            let mut random =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
            let q = random(s.batch * s.queries * dim);
            let k = random(s.batch * s.keys * dim);
            let v = random(s.batch * s.keys * dim);
            let want = reference(&s, &q, &k, &v, 0.3);
            // A head of 512 has scores up to about 30, where f32's
            // spacing is 2e-6 (the panels read 2.2e-5 there before the
            // one-pass version too).
            let bound = if s.head_dim > 64 { 5e-5 } else { 1e-5 };
            let err = max_difference(&attention_gemm(&s, &q, &k, &v, 0.3), &want);
            assert!(err < bound, "gemm {s:?}: {err}");
            if f32_products::available() {
                let err = max_difference(&attention_panels(&s, &q, &k, &v, 0.3), &want);
                assert!(err < bound, "panels {s:?}: {err}");
                // Keys that grow along the sequence, so that later blocks
                // of the pass keep raising each query's max.
                let (q, k) = growing(&s, &q, &k);
                let want = reference(&s, &q, &k, &v, 0.3);
                let err = max_difference(&attention_panels(&s, &q, &k, &v, 0.3), &want);
                assert!(err < bound, "panels, growing {s:?}: {err}");
            }
        }
    }

    /// q and k made positive, k growing along the keys (scores of about 1
    /// to 3 at head width 40).
    fn growing(s: &AttentionShape, q: &[f32], k: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let dim = s.heads * s.head_dim;
        let mut k = k.to_vec();
        for (j, row) in k.chunks_mut(dim).enumerate() {
            let grow = 1.0 + 3.0 * (j % s.keys) as f32 / s.keys as f32;
            row.iter_mut().for_each(|x| *x = 0.25 * x.abs() * grow);
        }
        (q.iter().map(|x| 0.25 * x.abs()).collect(), k)
    }

    fn max_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs()))
    }

    #[test]
    fn bf16_products_stay_within_bf16_rounding_of_the_textbook() {
        if !bf16::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        // Partial query panels, an odd number of keys (77, as the text
        // encoder's), a head width that is not whole blocks of 8 rows,
        // SD 1.5's 40 over more than one query block, keys over several
        // blocks of the pass with a partial odd last one (2100, 513), and
        // SD 1.5's wider heads (80, 160) and SD 2.1's and SDXL's (64).
        for (batch, queries, keys, heads, head_dim) in [
            (2, 70, 70, 3, 8),
            (1, 130, 77, 2, 5),
            (1, 300, 64, 2, 40),
            (1, 70, 2100, 2, 8),
            (1, 40, 513, 2, 40),
            (1, 33, 300, 1, 64),
            (1, 50, 260, 2, 80),
            (1, 20, 100, 1, 160),
        ] {
            let s = AttentionShape {
                batch,
                queries,
                keys,
                heads,
                head_dim,
            };
            let dim = heads * head_dim;
            let mut random =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
            let q = random(batch * queries * dim);
            let k = random(batch * keys * dim);
            let v = random(batch * keys * dim);
            let want = reference(&s, &q, &k, &v, 0.3);
            let err = max_difference(&attention_bf16(&s, &q, &k, &v, 0.3), &want);
            println!("{s:?}: {err}");
            assert!(err < 0.05, "{s:?}: {err}");
            let (q, k) = growing(&s, &q, &k);
            let want = reference(&s, &q, &k, &v, 0.3);
            let err = max_difference(&attention_bf16(&s, &q, &k, &v, 0.3), &want);
            println!("growing {s:?}: {err}");
            assert!(err < 0.05, "growing {s:?}: {err}");
        }
    }
}
