//! Matrix products with bf16 operands and f32 sums, on CPUs with
//! AVX512-BF16 (`vdpbf16ps`: 32 bf16 products summed pairwise into 16 f32
//! lanes per instruction, twice the multiply-adds of an f32 FMA).
//!
//! The right operand (a linear layer's `[in, out]` weight) is rounded to
//! bf16 once and packed into panels of `NR` (32) columns, each `[k/2][NR][2]`,
//! the pairs of consecutive `k` that one instruction sums. The left
//! operand (activations, f32) is rounded to bf16 pairs at each call
//! ([`PackedLhs`]): by [`product`] from a strided matrix, or by the caller
//! a block of 8 rows at a time (the convolution packs its unfolded input
//! so, straight from the image). Rounding is to nearest even, as PyTorch's
//! bf16 casts do.
//!
//! Where the CPU has AMX (Intel Sapphire Rapids and later) the products run
//! on its tiles instead ([`super::amx`]: 4-7x this kernel's speed there,
//! where `vdpbf16ps` does no more multiply-adds per cycle than f32 FMAs).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use std::ops::Range;

use rayon::prelude::*;

use super::f32_products::Addends;
#[cfg(target_arch = "x86_64")]
use super::f32_products::{self, Bias, Tile};
use super::SharedMut;

mod pack;
pub use pack::{
    gated_column, gated_columns, pack_block_from_columns, round8, ColumnPair, PackedLhs, PackedRhs,
    LHS_BLOCK,
};

/// Columns per panel: two 16-lane registers.
const NR: usize = 32;
/// Rows per kernel call: 8 x 2 accumulators of 16 lanes.
const MR: usize = 8;
/// Rows per task: its packed rows stay in L2 while each panel goes by.
const ROWS_PER_TASK: usize = 64;
/// Panels per task.
const PANELS_PER_TASK: usize = 4;

/// Whether this CPU runs [`product`]: x86-64 with AVX512-BF16 (AMD Zen 4,
/// Intel Cooper Lake, Sapphire Rapids and later).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bf16")
        && is_x86_feature_detected!("avx512vl")
        // Every CPU with AVX512-BF16 has it; the bf16 attention's packing
        // of probabilities takes its 16-bit permute.
        && is_x86_feature_detected!("avx512bw");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// What to tell a user who asks for bf16 on a CPU without [`available`].
pub const UNAVAILABLE: &str = "bf16 on the CPU needs AVX512-BF16 (AMD Zen 4, Intel Cooper Lake, \
     Sapphire Rapids or later), which this CPU lacks; use f32";

/// f32 to bf16 bits, rounded to nearest even (NaN stays NaN).
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

pub fn from_bf16(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `dst[m, n] = lhs[m, k] · rhs + bias + residual`, `lhs` rounded to
/// bf16, sums in f32; `dst` and `lhs` given as (pointer, row stride, column
/// stride) in floats, the residual at `dst`'s strides, the bias one value
/// per column. Each element of `dst` is written once, as its tile is
/// stored: writing the bias and residual first and adding the product onto
/// them cost a 2048 x 320 -> 2560 layer a third of its time.
///
/// Panics if the CPU lacks AVX512-BF16 ([`available`]).
///
/// # Safety
/// Every element of `dst`, `lhs` and the residual at their strides lies
/// inside its buffer, a bias has `n` values, and no other thread touches
/// `dst` meanwhile.
pub unsafe fn product(
    m: usize,
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: &PackedRhs,
    addends: Addends,
) {
    assert!(available(), "bf16 products need AVX512-BF16");
    #[cfg(target_arch = "x86_64")]
    if super::amx::available() {
        // SAFETY: as the caller promises.
        let rows = unsafe { super::amx::Rows::from_f32(m, rhs.k, lhs) };
        // SAFETY: as the caller promises; the rows are the product's.
        return unsafe {
            in_tasks(dst, m, rhs, addends, |dst, rows_part, panels, addends| {
                super::amx::product(dst, &rows, rows_part, rhs, panels, addends)
            })
        };
    }
    // SAFETY: as the caller promises, on a CPU that has the instructions.
    unsafe { product_packed(dst, &PackedLhs::new(m, rhs.k, lhs), rhs, addends) }
}

/// [`product`] with the left operand packed already.
///
/// # Safety
/// As [`product`], for `dst` `[lhs.m, rhs.n]`.
pub unsafe fn product_packed(
    dst: (*mut f32, usize, usize),
    lhs: &PackedLhs,
    rhs: &PackedRhs,
    addends: Addends,
) {
    assert!(available(), "bf16 products need AVX512-BF16");
    assert_eq!(lhs.k, rhs.k, "the operands' inner sizes");
    let lhs = KernelLhs::new(lhs);
    // SAFETY: as the caller promises.
    unsafe {
        in_tasks(
            dst,
            lhs.blocks.m,
            rhs,
            addends,
            |dst, rows, panels, addends| product_part(dst, &lhs, rows, rhs, panels, addends),
        )
    }
}

/// A [`PackedLhs`] as the kernel that multiplies it takes it: on AMX, laid
/// out in rows, once for all the parts of its product.
pub struct KernelLhs<'a> {
    blocks: &'a PackedLhs,
    #[cfg(target_arch = "x86_64")]
    rows: Option<super::amx::Rows>,
}

impl<'a> KernelLhs<'a> {
    pub fn new(blocks: &'a PackedLhs) -> Self {
        Self {
            blocks,
            #[cfg(target_arch = "x86_64")]
            rows: super::amx::available().then(|| super::amx::Rows::new(blocks, 0..blocks.m)),
        }
    }
}

/// `part(dst, rows, panels, addends)` for blocks of [`ROWS_PER_TASK`] rows
/// by [`PANELS_PER_TASK`] panels of a `[m, rhs.n]` product, in parallel;
/// `dst` and the addends given to each part start at its first element.
///
/// # Safety
/// As [`product`]; `part` writes only its part of `dst`.
unsafe fn in_tasks(
    dst: (*mut f32, usize, usize),
    m: usize,
    rhs: &PackedRhs,
    addends: Addends,
    part: impl Fn((*mut f32, usize, usize), Range<usize>, Range<usize>, Addends) + Sync,
) {
    assert!(
        addends.bias.is_none_or(|b| b.len() == rhs.n),
        "bias of {}",
        rhs.n
    );
    assert!(
        !rhs.gated || (addends.residual.is_none() && dst.2 == 1),
        "a gated product into rows, with no residual"
    );
    let panels = rhs.n.div_ceil(NR);
    let row_tasks = m.div_ceil(ROWS_PER_TASK);
    let panel_tasks = panels.div_ceil(PANELS_PER_TASK);
    let out = SharedMut(dst.0);
    // The residual as an address, to share with the tasks.
    let (bias, residual) = (addends.bias, addends.residual.map(|r| r as usize));
    (0..row_tasks * panel_tasks)
        .into_par_iter()
        .for_each(|task| {
            let (rt, pt) = (task / panel_tasks, task % panel_tasks);
            let rows = rt * ROWS_PER_TASK..((rt + 1) * ROWS_PER_TASK).min(m);
            let panels = pt * PANELS_PER_TASK..((pt + 1) * PANELS_PER_TASK).min(panels);
            // SAFETY: as the caller promises; only this task writes these
            // rows and panels of dst.
            unsafe {
                let offset = rows.start * dst.1 + panels.start * rhs.panel_outputs() * dst.2;
                let addends = Addends {
                    bias: bias.map(|b| &b[panels.start * NR..]),
                    residual: residual.map(|r| (r as *const f32).add(offset)),
                };
                part((out.ptr().add(offset), dst.1, dst.2), rows, panels, addends)
            };
        });
}

/// `dst[m, n] = lhs · rhs` on the calling thread, for callers that share
/// out the work themselves.
///
/// # Safety
/// As [`product`], for `dst` `[lhs.m, rhs.n]`.
pub unsafe fn product_packed_into(dst: (*mut f32, usize, usize), lhs: &PackedLhs, rhs: &PackedRhs) {
    let panels = 0..rhs.n.div_ceil(NR);
    let lhs = KernelLhs::new(lhs);
    // SAFETY: as the caller promises.
    unsafe { product_part(dst, &lhs, 0..lhs.blocks.m, rhs, panels, Addends::default()) };
}

/// A multiple of rows at which [`product_part`] runs fastest: where AMX
/// tiles can start.
pub const ROW_GROUP: usize = 16;

/// The rows a part of a product is best padded to on this CPU:
/// [`ROW_GROUP`] where AMX runs it, else one [`LHS_BLOCK`] (padding to 16
/// there only multiplies zeros: twice the products for the 8 tiles of a
/// 4x4 map in bf16 Winograd).
pub fn row_padding() -> usize {
    #[cfg(target_arch = "x86_64")]
    if super::amx::available() {
        return ROW_GROUP;
    }
    LHS_BLOCK
}

/// Columns per panel of a [`PackedRhs`].
pub const RHS_PANEL: usize = NR;

/// Part of a product on the calling thread: `dst = lhs[rows] · rhs[..,
/// panels] + addends`, for the left operand's rows `rows` (starting at a
/// multiple of [`LHS_BLOCK`]) and the right operand's columns in `panels`
/// ([`RHS_PANEL`] each). `dst`, the residual and the bias start at the
/// element of row `rows.start` and the first column of `panels.start`.
///
/// # Safety
/// As [`product`], for that part of `dst`.
pub unsafe fn product_part(
    dst: (*mut f32, usize, usize),
    lhs: &KernelLhs,
    rows: Range<usize>,
    rhs: &PackedRhs,
    panels: Range<usize>,
    addends: Addends,
) {
    assert!(available(), "bf16 products need AVX512-BF16");
    assert_eq!(lhs.blocks.k, rhs.k, "the operands' inner sizes");
    assert!(
        rows.start.is_multiple_of(MR) && rows.end <= lhs.blocks.m,
        "rows {rows:?}"
    );
    #[cfg(target_arch = "x86_64")]
    if let Some(a) = lhs
        .rows
        .as_ref()
        .filter(|_| rows.start.is_multiple_of(ROW_GROUP))
    {
        // SAFETY: as the caller promises; a holds every row.
        return unsafe { super::amx::product(dst, a, rows, rhs, panels, addends) };
    }
    // SAFETY: as the caller promises.
    unsafe { product_part_avx512(dst, lhs.blocks, rows, rhs, panels, addends) }
}

/// [`product_part`] on AVX512-BF16.
///
/// # Safety
/// As [`product_part`].
unsafe fn product_part_avx512(
    dst: (*mut f32, usize, usize),
    lhs: &PackedLhs,
    rows: Range<usize>,
    rhs: &PackedRhs,
    panels: Range<usize>,
    addends: Addends,
) {
    let (n, pairs) = (rhs.n, rhs.pairs());
    let (ptr, dst_rs, dst_cs) = dst;
    for panel in panels.clone() {
        let b = rhs.panel(panel);
        let cols = NR.min(n - panel * NR);
        for r0 in rows.clone().step_by(MR) {
            let a = &lhs.data[r0 * pairs..(r0 + MR) * pairs];
            let row = r0 - rows.start;
            let panel_in_part = panel - panels.start;
            let (col, out_col) = (panel_in_part * NR, panel_in_part * rhs.panel_outputs());
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a holds MR rows of `pairs`, b one panel; the tile
            // (row.., out_col..) is inside dst and the residual up to the
            // last row and the panel's outputs, and the bias has `cols`
            // from col (the caller's promise).
            unsafe {
                let offset = row * dst_rs + out_col * dst_cs;
                let tile = Tile {
                    dst: ptr.add(offset),
                    strides: (dst_rs, dst_cs),
                    bias: addends.bias.map(|b| Bias::PerColumn(&b[col..col + cols])),
                    residual: addends.residual.map(|r| r.add(offset)),
                    size: [MR.min(rows.end - r0), cols],
                };
                tile.prefetch();
                kernel(a, b, pairs, &tile, rhs);
            }
        }
    }
}

/// `tile = a[pairs][MR] · b[pairs][NR] + bias + residual` for the tile's
/// rows and columns, stored by [`store`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn kernel(a: &[u32], b: &[u32], pairs: usize, tile: &Tile, rhs: &PackedRhs) {
    // SAFETY: the tile is inside dst and the residual (the caller's
    // promise).
    unsafe { store(&tile_sums(a, b, pairs), tile, rhs) }
}

/// A tile of sums of a product with `rhs` plus its addends, stored as the
/// f32 kernel stores its tiles, or gated ([`super::geglu::store_gated`])
/// where `rhs` is.
///
/// # Safety
/// The tile's rows and output columns of `dst` (and of the residual) lie
/// inside their buffers; the CPU has AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
pub(super) unsafe fn store(sums: &[[__m512; 2]; MR], tile: &Tile, rhs: &PackedRhs) {
    // SAFETY: as the caller promises.
    unsafe {
        match rhs.gated {
            true => super::geglu::store_gated(sums, tile),
            false => f32_products::store(sums, tile),
        }
    }
}

/// `a[pairs][MR] · b[pairs][NR]`, returned rather than stored here: with
/// the sums' address passed on to the stores, they were kept in memory
/// through the loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
#[inline]
pub(super) fn tile_sums(a: &[u32], b: &[u32], pairs: usize) -> [[__m512; 2]; MR] {
    assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        // SAFETY: b has pairs * NR elements (checked above): pair p's 32.
        let (b0, b1) = unsafe {
            (
                as_bf16(_mm512_loadu_si512(bp.add(p * NR) as *const __m512i)),
                as_bf16(_mm512_loadu_si512(bp.add(p * NR + 16) as *const __m512i)),
            )
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: a has pairs * MR elements (checked above); indexing
            // instead kept a bounds check per row in the loop.
            let pair = as_bf16(_mm512_set1_epi32(unsafe { *ap.add(p * MR + r) } as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], pair, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], pair, b1);
        }
    }
    acc
}

/// 32 bf16 held as integers, as the bf16 instructions take them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_bf16(bits: __m512i) -> __m512bh {
    // SAFETY: both are 64 bytes of plain data.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(bits) }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even one.
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: even.
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// The sums of the bf16-rounded operands, in f64.
    pub(in crate::engine::cpu) fn reference(
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f64> {
        let round = |x: f32| from_bf16(to_bf16(x)) as f64;
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|l| round(a[i * k + l]) * round(b[l * n + j]))
                    .sum();
            }
        }
        out
    }

    #[test]
    fn matches_the_rounded_operands_sums_in_every_layout() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        // Tails everywhere: rows past a block, odd k, columns past a panel;
        // and one shape with whole blocks and panels over several tasks.
        for (m, k, n) in [(13, 37, 70), (1, 1, 1), (72, 64, 160), (130, 40, 33)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let residual: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let want = reference(&a, &b, m, k, n);
            let b_t: Vec<f32> = (0..k * n).map(|x| b[(x % k) * n + x / k]).collect();
            let packed = PackedRhs::from_transposed(&b_t, k, n);
            // lhs row-major or column-major; dst row-major or column-major.
            let a_cols: Vec<f32> = (0..m * k).map(|x| a[(x % m) * k + x / m]).collect();
            for (lhs, lhs_strides) in [(&a, (k, 1)), (&a_cols, (1, m))] {
                // The product alone (`product_packed_into`), or with a bias
                // and a residual (`product`).
                for (dst_strides, addends) in [(n, 1), (1, m)]
                    .into_iter()
                    .flat_map(|s| [(s, false), (s, true)])
                {
                    let at = |i: usize, j: usize| i * dst_strides.0 + j * dst_strides.1;
                    let mut residual_at = vec![0f32; m * n];
                    for i in 0..m {
                        for j in 0..n {
                            residual_at[at(i, j)] = residual[i * n + j];
                        }
                    }
                    // Every element must be written.
                    let mut dst = vec![f32::NAN; m * n];
                    let dst_at = (dst.as_mut_ptr(), dst_strides.0, dst_strides.1);
                    let lhs_at = (lhs.as_ptr(), lhs_strides.0, lhs_strides.1);
                    // SAFETY: the buffers are m x n or m x k at the strides
                    // given, the bias n long.
                    unsafe {
                        if addends {
                            let addends = Addends {
                                bias: Some(&bias),
                                residual: Some(residual_at.as_ptr()),
                            };
                            product(m, dst_at, lhs_at, &packed, addends);
                        } else {
                            product_packed_into(dst_at, &PackedLhs::new(m, k, lhs_at), &packed);
                        }
                    }
                    for i in 0..m {
                        for j in 0..n {
                            let added = if addends {
                                residual[i * n + j] + bias[j]
                            } else {
                                0.0
                            };
                            let want = want[i * n + j] + added as f64;
                            let got = dst[at(i, j)] as f64;
                            assert!(
                                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "[{m}, {k}, {n}] lhs {lhs_strides:?} dst {dst_strides:?} addends {addends} at ({i}, {j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
