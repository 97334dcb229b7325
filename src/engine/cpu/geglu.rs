//! GEGLU (diffusers' feed-forward gate): `a · gelu(b)` for each row `[a |
//! b]` of the projection, with the exact (erf) GELU, in one pass over the
//! rows (candle's path copies both halves, runs a scalar erf, and
//! multiplies in a third pass).

use rayon::prelude::*;

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
