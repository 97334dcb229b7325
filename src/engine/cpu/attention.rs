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
use super::f32_products::{self, Addends, Panels, PANEL};
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
/// [`attention_bf16`]: per head and block of [`PANEL`] queries, the scores
/// `Sᵀ = K (scale · q)ᵀ` are `[keys, PANEL]` (K broadcast 8 keys at a time,
/// the block's queries packed as one panel), their softmax runs down the
/// columns in place, and they are the right operand of `outᵀ = Vᵀ P` (Vᵀ
/// broadcast 8 of the head's dimensions at a time, the tile stored into the
/// output's columns). The scores (512 KiB at 4096 keys) stay in L2 from
/// the first product to the second.
fn attention_panels(s: &AttentionShape, q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f32> {
    s.check(q, k, v);
    let dim = s.heads * s.head_dim;
    let mut out = vec![0f32; q.len()];
    let out_ptr = SharedMut(out.as_mut_ptr());
    let blocks = s.queries.div_ceil(PANEL);
    (0..s.batch * s.heads * blocks)
        .into_par_iter()
        .for_each(|i| {
            let (bh, block) = (i / blocks, i % blocks);
            let (b, h) = (bh / s.heads, bh % s.heads);
            let width = PANEL.min(s.queries - block * PANEL);
            let q_at = (b * s.queries + block * PANEL) * dim + h * s.head_dim;
            let kv_at = b * s.keys * dim + h * s.head_dim;
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
                scores.resize(s.keys * PANEL, 0.0);
                // SAFETY: head h of batch b's keys and values are `keys`
                // rows of head_dim floats at row stride dim from kv_at
                // (checked above); the block's rows of head h in the
                // output are `width` rows of head_dim at row stride dim
                // from q_at, which only this task writes; scores is [keys,
                // PANEL]; the products are enabled.
                unsafe {
                    let queries = Panels::packed(s.head_dim, width, &queries[..]);
                    let keys = (k.as_ptr().add(kv_at), dim, 1);
                    let dst = (scores.as_mut_ptr(), PANEL, 1);
                    f32_products::product_on_this_thread(
                        s.keys,
                        dst,
                        keys,
                        &queries,
                        Addends::default(),
                    );
                    let sums = softmax_panel(scores, s.keys, width);
                    let probabilities = Panels::packed(s.keys, width, &scores[..]);
                    let values_t = (v.as_ptr().add(kv_at), 1, dim);
                    let at = out_ptr.ptr().add(q_at);
                    let dst = (at, 1, dim);
                    f32_products::product_on_this_thread(
                        s.head_dim,
                        dst,
                        values_t,
                        &probabilities,
                        Addends::default(),
                    );
                    for (j, sum) in sums.iter().enumerate().take(width) {
                        let row = std::slice::from_raw_parts_mut(at.add(j * dim), s.head_dim);
                        row.iter_mut().for_each(|x| *x /= sum);
                    }
                }
            });
        });
    out
}

/// The softmax of the first `width` columns of a panel of scores (`[keys,
/// PANEL]`) without its division: e^(score - max) in place, 16 columns at a
/// time down all the keys twice (the max, then the exponentials); returns
/// each column's sum. Columns past `width` become zeros.
fn softmax_panel(scores: &mut [f32], keys: usize, width: usize) -> [f32; PANEL] {
    assert_eq!(scores.len(), keys * PANEL, "scores of [{keys}, {PANEL}]");
    let mut sums = [0f32; PANEL];
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only `attention_panels` calls this, where the f32 products
    // (AVX-512) are enabled; the size is checked above.
    unsafe {
        softmax_panel_x86(scores, keys, width, &mut sums)
    };
    // The f32 products need AVX-512, so elsewhere this is never called.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (keys, width);
    sums
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_panel_x86(
    scores: &mut [f32],
    keys: usize,
    width: usize,
    sums: &mut [f32; PANEL],
) {
    use std::arch::x86_64::*;
    const STRIP: usize = 16;
    for first in (0..PANEL).step_by(STRIP) {
        let lanes = width.saturating_sub(first).min(STRIP);
        let mask = ((1u32 << lanes) - 1) as __mmask16;
        let strip = scores.as_mut_ptr().wrapping_add(first);
        // SAFETY (all loads and stores): row r < keys of the strip is
        // inside scores ([keys, PANEL], checked by the caller).
        let load = |r: usize| unsafe { _mm512_maskz_loadu_ps(mask, strip.add(r * PANEL)) };
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for r in 0..keys {
            max = _mm512_max_ps(load(r), max);
        }
        let mut sum = _mm512_setzero_ps();
        for r in 0..keys {
            let e = _mm512_maskz_mov_ps(mask, exp_avx512_f32(_mm512_sub_ps(load(r), max)));
            sum = _mm512_add_ps(sum, e);
            unsafe { _mm512_storeu_ps(strip.add(r * PANEL), e) };
        }
        // SAFETY: the strip's 16 sums are inside `sums`.
        unsafe { _mm512_storeu_ps(sums.as_mut_ptr().add(first), sum) };
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
        ] {
            let dim = s.heads * s.head_dim;
            let mut random =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
            let q = random(s.batch * s.queries * dim);
            let k = random(s.batch * s.keys * dim);
            let v = random(s.batch * s.keys * dim);
            let want = reference(&s, &q, &k, &v, 0.3);
            let err = max_difference(&attention_gemm(&s, &q, &k, &v, 0.3), &want);
            assert!(err < 1e-5, "gemm {s:?}: {err}");
            if f32_products::available() {
                let err = max_difference(&attention_panels(&s, &q, &k, &v, 0.3), &want);
                assert!(err < 1e-5, "panels {s:?}: {err}");
            }
        }
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
            let mut k = random(batch * keys * dim);
            let v = random(batch * keys * dim);
            let want = reference(&s, &q, &k, &v, 0.3);
            let err = max_difference(&attention_bf16(&s, &q, &k, &v, 0.3), &want);
            println!("{s:?}: {err}");
            assert!(err < 0.05, "{s:?}: {err}");
            // Keys that grow along the sequence (scores of about 1 to 3),
            // so that later blocks of the pass keep raising each query's
            // max.
            for (j, row) in k.chunks_mut(dim).enumerate() {
                let grow = 1.0 + 3.0 * (j % keys) as f32 / keys as f32;
                row.iter_mut().for_each(|x| *x = 0.25 * x.abs() * grow);
            }
            let q: Vec<f32> = q.iter().map(|x| 0.25 * x.abs()).collect();
            let want = reference(&s, &q, &k, &v, 0.3);
            let err = max_difference(&attention_bf16(&s, &q, &k, &v, 0.3), &want);
            println!("growing {s:?}: {err}");
            assert!(err < 0.05, "growing {s:?}: {err}");
        }
    }
}
