//! GEGLU (diffusers' feed-forward gate): `a · gelu(b)` for each row `[a |
//! b]` of the projection, with the exact (erf) GELU, in one pass over the
//! rows (candle's path copies both halves, runs a scalar erf, and
//! multiplies in a third pass), or in a bf16 or f32 product's epilogue
//! (`store_gated`), where the projection's `2 x` wider output is never
//! stored at all.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::f32_products::{Bias, Tile};
use super::math::erf;
use super::vectorized;

/// `out[r, j] = h[r, j] · gelu(h[r, half + j])` for rows of width `2 · half`.
pub fn geglu(h: &[f32], half: usize) -> Vec<f32> {
    assert_eq!(h.len() % (2 * half), 0, "rows of 2 * {half}");
    let mut out = vec![0f32; h.len() / 2];
    out.par_chunks_mut(half)
        .zip(h.par_chunks(2 * half))
        .with_min_len(16)
        .for_each(|(dst, row)| {
            vectorized(
                #[inline(always)]
                || gate_row(dst, row),
            )
        });
    out
}

/// A tile of sums of a product with a gated weight
/// ([`super::bf16::PackedRhs::gated_from_transposed`],
/// [`super::f32_products::Panels::gated_from_transposed`]), each row 16 values
/// `a` and their 16 gates `b`, plus the bias: 16 columns `a · gelu(b)`
/// stored into rows at `tile.dst`. The same arithmetic as the projection
/// stored and then [`geglu`], so the same values.
///
/// # Safety
/// The tile's rows of 16 floats at `tile.dst` lie inside its buffer; the
/// CPU has AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
pub(super) unsafe fn store_gated(sums: &[[__m512; 2]; 8], tile: &Tile) {
    let ([rows, cols], (rs, cs)) = (tile.size, tile.strides);
    assert!(
        cols == 32 && cs == 1 && tile.residual.is_none(),
        "a gated tile of {cols} columns at strides {:?}",
        tile.strides
    );
    let bias = match tile.bias {
        // SAFETY: the bias has `cols` values.
        Some(Bias::PerColumn(b)) => unsafe {
            [
                _mm512_loadu_ps(b.as_ptr()),
                _mm512_loadu_ps(b.as_ptr().add(16)),
            ]
        },
        Some(Bias::PerRow(_)) => panic!("a gated tile with a bias per row"),
        None => [_mm512_setzero_ps(); 2],
    };
    for (r, halves) in sums.iter().enumerate().take(rows) {
        let mut row = [0f32; 32];
        // SAFETY: row holds 32 floats; row r of the tile holds 16 (the
        // caller's promise).
        unsafe {
            _mm512_storeu_ps(row.as_mut_ptr(), _mm512_add_ps(halves[0], bias[0]));
            _mm512_storeu_ps(row.as_mut_ptr().add(16), _mm512_add_ps(halves[1], bias[1]));
            gate_row(
                std::slice::from_raw_parts_mut(tile.dst.add(r * rs), 16),
                &row,
            );
        }
    }
}

/// `dst[j] = a[j] · gelu(b[j])` for `row = [a | b]`.
#[inline(always)]
fn gate_row(dst: &mut [f32], row: &[f32]) {
    let (a, b) = row.split_at(dst.len());
    for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
        *d = a * 0.5 * b * (1.0 + erf(b * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_each_row_with_the_gelu_of_its_second_half() {
        let h = [1.0, 2.0, 0.5, -1.0, 3.0, -2.0, 1.0, 0.0];
        let gelu = |x: f64| 0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()));
        let want = [
            1.0 * gelu(0.5),
            2.0 * gelu(-1.0),
            3.0 * gelu(1.0),
            -2.0 * gelu(0.0),
        ];
        for (got, want) in geglu(&h, 2).iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
