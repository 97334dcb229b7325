//! Multi-head attention with both products in bf16 (operands rounded to
//! bf16, sums and the softmax in f32), for `--dtype bf16`, in one pass
//! over the keys as flash attention does.
//!
//! Per head, K and Vᵀ are packed once as left operands. Per block of 32
//! queries (one right-operand panel), each block of [`KEY_BLOCK`] keys
//! gets its scores `K qᵀ` (`[keys, 32]`, 32 KiB: in L1), their
//! exponentials against each query's running max, packed straight into
//! the right operand of `outᵀ += Vᵀ P`. A block that raises a query's max
//! first scales that query's partial result and sum down by the
//! difference. Transposed so, the head's width (40 in SD 1.5) is the short
//! side of both products, where the kernel takes rows 8 at a time.
//! On CPUs with AMX both products run on its tiles instead (`super::amx`:
//! keys and Vᵀ laid out for them once per head).
//!
//! The version before made all of a query block's scores first (512 KiB
//! at 4096 keys). With that head's K and V they did not fit in the 1 MiB
//! L2 of the Zen 5 this was measured on, and the max took a pass of its
//! own: 2 x 4096 x 4096 (8 heads of 40) took 81 ms there, 62.5 now.

use std::cell::RefCell;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::amx;
#[cfg(target_arch = "x86_64")]
use super::attention::{add_tile, scale_columns, store_divided};
use super::attention::{for_each_block, AttentionShape};
#[cfg(target_arch = "x86_64")]
use super::bf16::tile_sums;
use super::bf16::{self, PackedLhs, PackedRhs, LHS_BLOCK, RHS_PANEL};
use super::SharedMut;

/// Keys per step of the pass: their scores (`KEY_BLOCK * RHS_PANEL`
/// floats, 32 KiB) and probabilities (16 KiB) stay in L1 between the two
/// products.
const KEY_BLOCK: usize = 256;

// The pass's outᵀ helpers, shared with the f32 kernel, take its panels
// of queries as wide as a bf16 right-operand panel.
const _: () = assert!(RHS_PANEL == super::f32_products::PANEL);

/// One task's scores, probabilities and `outᵀ`, kept between its blocks,
/// and on AMX its queries padded to whole tiles.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    probabilities: Vec<u32>,
    out_t: Vec<f32>,
    padded_queries: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `softmax(scale · q kᵀ) v` per head, as [`super::attention::attention`]
/// takes and returns them, with bf16 products.
///
/// Panics if the CPU lacks AVX512-BF16 ([`bf16::available`]).
pub fn attention_bf16(s: &AttentionShape, q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f32> {
    assert!(bf16::available(), "{}", bf16::UNAVAILABLE);
    s.check(q, k, v);
    let dim = s.heads * s.head_dim;
    // SAFETY (both): head h of batch b's keys and values are `keys` rows of
    // head_dim floats at row stride dim from (b * keys) * dim + h *
    // head_dim, inside k and v (checked above).
    let heads: Vec<Head> = (0..s.batch * s.heads)
        .into_par_iter()
        .map(|bh| {
            let at = (bh / s.heads) * s.keys * dim + (bh % s.heads) * s.head_dim;
            let (keys, values) = unsafe {
                (
                    PackedLhs::new(s.keys, s.head_dim, (k.as_ptr().add(at), dim, 1)),
                    PackedLhs::new(s.head_dim, s.keys, (v.as_ptr().add(at), 1, dim)),
                )
            };
            Head::new(keys, values)
        })
        .collect();
    let mut out = vec![0f32; q.len()];
    let out_ptr = SharedMut(out.as_mut_ptr());
    for_each_block(s, RHS_PANEL, |b, h, rows| {
        let head = &heads[b * s.heads + h];
        let q_at = (b * s.queries + rows.start) * dim + h * s.head_dim;
        let queries = PackedRhs::from_columns(s.head_dim, rows.len(), |j| {
            &q[q_at + j * dim..][..s.head_dim]
        });
        let panel = QueryPanel {
            head,
            queries: &queries,
            key_count: s.keys,
            head_dim: s.head_dim,
            scale,
        };
        SCRATCH.with_borrow_mut(|scratch| {
            // SAFETY: this block's rows of head h in the output are
            // rows.len() rows of head_dim floats at row stride dim from
            // q_at; no other task writes them.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                panel.attend_x86(scratch, (out_ptr.ptr().add(q_at), dim));
            }
            // attention_bf16 refuses to run without AVX512-BF16, so
            // elsewhere this is never reached.
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (&panel, scratch, out_ptr);
        });
    });
    out
}

/// One head's keys `[keys, head_dim]` and values `[head_dim, keys]` (Vᵀ),
/// packed once; on AMX also laid out in rows for its tiles.
struct Head {
    keys: PackedLhs,
    values: PackedLhs,
    #[cfg(target_arch = "x86_64")]
    tiles: Option<(amx::Rows, amx::Rows)>,
}

impl Head {
    fn new(keys: PackedLhs, values: PackedLhs) -> Self {
        #[cfg(target_arch = "x86_64")]
        let tiles = amx::available().then(|| {
            (
                amx::Rows::new(&keys, 0..keys.m()),
                amx::Rows::new(&values, 0..values.m()),
            )
        });
        Self {
            keys,
            values,
            #[cfg(target_arch = "x86_64")]
            tiles,
        }
    }
}

/// One head and one panel of its queries.
struct QueryPanel<'a> {
    head: &'a Head,
    /// `[head_dim, width]`, `width <= RHS_PANEL`.
    queries: &'a PackedRhs,
    key_count: usize,
    head_dim: usize,
    scale: f32,
}

impl QueryPanel<'_> {
    /// Writes the panel's `width` rows of the result to `out` (the first
    /// query's head, at row stride `.1`).
    ///
    /// # Safety
    /// `width` rows of `head_dim` floats at that stride lie inside `out`'s
    /// buffer, and the CPU has AVX512-BF16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl,avx512bw")]
    unsafe fn attend_x86(&self, scratch: &mut Scratch, (out, stride): (*mut f32, usize)) {
        use super::math::exp2_avx512;
        use std::arch::x86_64::*;
        const HALF: usize = RHS_PANEL / 2;
        let head_pairs = self.head_dim.div_ceil(2);
        let groups = self.head_dim.div_ceil(LHS_BLOCK);
        let Scratch {
            scores,
            probabilities,
            out_t,
            padded_queries,
        } = scratch;
        scores.resize(KEY_BLOCK * RHS_PANEL, 0.0);
        probabilities.resize(KEY_BLOCK / 2 * RHS_PANEL, 0);
        out_t.clear();
        let queries = self.queries.panel(0);
        // On AMX: the tiles, and the queries padded to whole tiles of pairs.
        let amx = self.head.tiles.as_ref().map(|(keys, values)| {
            padded_queries.clear();
            padded_queries.extend_from_slice(queries);
            padded_queries.resize(keys.pairs() * RHS_PANEL, 0);
            (amx::Tiles::configure(), keys, values, &*padded_queries)
        });
        // outᵀ's rows: the AVX512 kernel's groups of 8, AMX's tiles of 16.
        let out_rows = match amx {
            Some(_) => self.head_dim.next_multiple_of(super::bf16::ROW_GROUP),
            None => groups * LHS_BLOCK,
        };
        out_t.resize(out_rows * RHS_PANEL, 0.0);
        // e^(scale·x) = 2^(scale·log2(e)·x).
        let scale = _mm512_set1_ps(self.scale * std::f32::consts::LOG2_E);
        let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); 2];
        let mut sum = [_mm512_setzero_ps(); 2];
        // `vpermw` indices that interleave two rows of 16 bf16 (the even
        // keys', then the odd keys') into 16 pairs.
        let pairs_of: [u16; 32] = std::array::from_fn(|i| (i / 2 + 16 * (i % 2)) as u16);
        // SAFETY: 64 bytes.
        let pairs_of = unsafe { _mm512_loadu_si512(pairs_of.as_ptr() as *const __m512i) };
        for start in (0..self.key_count).step_by(KEY_BLOCK) {
            let n = KEY_BLOCK.min(self.key_count - start);
            // Scores (rows past n as -inf, or on AMX not read) and the
            // block's max of each column.
            let mut block_max = max;
            if let Some((tiles, keys, _, queries)) = &amx {
                amx::scores(tiles, keys, start, n, queries, scores);
                for row in scores.chunks_exact(RHS_PANEL).take(n) {
                    for (half, max) in block_max.iter_mut().enumerate() {
                        // SAFETY: a row of scores has RHS_PANEL floats.
                        let x = unsafe { _mm512_loadu_ps(row.as_ptr().add(half * HALF)) };
                        *max = _mm512_max_ps(*max, x);
                    }
                }
            }
            for tile in (0..n.div_ceil(LHS_BLOCK)).filter(|_| amx.is_none()) {
                let block = self.head.keys.block(start / LHS_BLOCK + tile);
                let sums = tile_sums(block, queries, head_pairs);
                for (r, row) in sums.iter().enumerate() {
                    let key = tile * LHS_BLOCK + r;
                    for (half, &x) in row.iter().enumerate() {
                        let x = if key < n {
                            x
                        } else {
                            _mm512_set1_ps(f32::NEG_INFINITY)
                        };
                        block_max[half] = _mm512_max_ps(block_max[half], x);
                        // SAFETY: key < KEY_BLOCK rows of RHS_PANEL.
                        unsafe {
                            _mm512_storeu_ps(
                                scores.as_mut_ptr().add(key * RHS_PANEL + half * HALF),
                                x,
                            )
                        };
                    }
                }
            }
            // A raised max scales what the earlier blocks summed by
            // e^(scale·(old - new)); before the first block both are 0.
            if start > 0 {
                let raised =
                    (0..2).any(|h| _mm512_cmp_ps_mask::<_CMP_GT_OQ>(block_max[h], max[h]) != 0);
                if raised {
                    let factor: [__m512; 2] = std::array::from_fn(|h| {
                        exp2_avx512(_mm512_mul_ps(_mm512_sub_ps(max[h], block_max[h]), scale))
                    });
                    scale_columns(out_t, &mut sum, factor);
                }
            }
            max = block_max;
            // e^(scale·x - scale·max) as bf16 pairs of keys, the even key
            // in the lower half; the odd key past an odd n is 0.
            let shift: [__m512; 2] = std::array::from_fn(|h| {
                _mm512_mul_ps(max[h], _mm512_sub_ps(_mm512_setzero_ps(), scale))
            });
            let pairs = n.div_ceil(2);
            for p in 0..pairs {
                for h in 0..2 {
                    // SAFETY: rows 2p and 2p + 1 < KEY_BLOCK of scores.
                    let score = |key: usize| unsafe {
                        _mm512_loadu_ps(scores.as_ptr().add(key * RHS_PANEL + h * HALF))
                    };
                    let even = exp2_avx512(_mm512_fmadd_ps(score(2 * p), scale, shift[h]));
                    let odd = if 2 * p + 1 < n {
                        exp2_avx512(_mm512_fmadd_ps(score(2 * p + 1), scale, shift[h]))
                    } else {
                        _mm512_setzero_ps()
                    };
                    sum[h] = _mm512_add_ps(sum[h], _mm512_add_ps(even, odd));
                    // Both rounded in one instruction (even's first), then
                    // interleaved: two where widening each took six.
                    // SAFETY: both are 64 bytes of plain data.
                    let rows = unsafe {
                        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(odd, even))
                    };
                    // SAFETY: pair p < KEY_BLOCK / 2 rows of RHS_PANEL.
                    unsafe {
                        _mm512_storeu_si512(
                            probabilities.as_mut_ptr().add(p * RHS_PANEL + h * HALF)
                                as *mut __m512i,
                            _mm512_permutexvar_epi16(pairs_of, rows),
                        )
                    };
                }
            }
            // outᵀ += Vᵀ[.., block] P: on AMX, with the probabilities past
            // the block zero to a whole tile of pairs.
            if let Some((tiles, _, values, _)) = &amx {
                let whole = pairs.next_multiple_of(super::bf16::ROW_GROUP);
                probabilities[pairs * RHS_PANEL..whole * RHS_PANEL].fill(0);
                let keys = (start / 2, pairs);
                amx::accumulate(tiles, values, self.head_dim, keys, probabilities, out_t);
                continue;
            }
            // Else 8 of the head's dimensions at a time.
            for (group, out_rows) in out_t.chunks_exact_mut(LHS_BLOCK * RHS_PANEL).enumerate() {
                let values = &self.head.values.block(group)[start / 2 * LHS_BLOCK..];
                let sums = tile_sums(values, probabilities, pairs);
                add_tile(out_rows, &sums);
            }
        }
        // SAFETY: the caller's promise.
        unsafe { store_divided(out_t, sum, (out, stride, self.queries.n()), self.head_dim) };
    }
}
