//! NCHW channel planes to the rows of bf16 pairs that AMX left tiles
//! load: 16 pixels of 32 channels at a time, each channel's 16 pixels
//! rounded and packed, then transposed so that each pixel's 16 pairs lie
//! in a row. The direct 3x3 convolutions lay out their input so, and the
//! products whose left operand is a map's channels (1x1 convolutions,
//! SD 1.x's transformer projections) their rows. (Element by element,
//! a 640 -> 320 1x1 convolution of two 32 x 32 maps took 3.1 ms; so, 1.1.)

use std::arch::x86_64::*;

/// Pairs in a row: one left tile's row, 32 channels.
pub(super) const PAIRS: usize = 16;

/// `width` pixels from `src` in each of `channels` (at most 32) planes
/// `plane` floats apart, as rows of [`PAIRS`] bf16 pairs (channels 2p and
/// 2p + 1 in pair p, the even one low), pixel i's row at `dst + i *
/// PAIRS`; pairs of the missing channels are zeros.
///
/// # Safety
/// Those `width` floats of each of those planes are readable and those
/// `width` rows writable; the CPU has AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
pub(super) unsafe fn planes_to_rows(
    src: *const f32,
    plane: usize,
    channels: usize,
    width: usize,
    dst: *mut u32,
) {
    debug_assert!(channels <= 2 * PAIRS);
    for x in (0..width).step_by(16) {
        let n = 16.min(width - x);
        let mask = (1u32 << n).wrapping_sub(1) as u16;
        let channel = |c: usize| {
            if c < channels {
                // SAFETY: n floats of plane c from pixel x (the caller's
                // promise).
                _mm512_cvtepu16_epi32(bits(unsafe {
                    _mm512_maskz_loadu_ps(mask, src.add(c * plane + x))
                }))
            } else {
                _mm512_setzero_si512()
            }
        };
        let pairs: [__m512; 16] = std::array::from_fn(|p| {
            let (even, odd) = (channel(2 * p), channel(2 * p + 1));
            _mm512_castsi512_ps(_mm512_or_si512(even, _mm512_slli_epi32::<16>(odd)))
        });
        for (i, row) in transpose16(pairs).into_iter().take(n).enumerate() {
            // SAFETY: row x + i < width (the caller's promise).
            unsafe { _mm512_storeu_ps(dst.add((x + i) * PAIRS) as *mut f32, row) };
        }
    }
}

/// 16 floats rounded to bf16 (nearest even), as bits.
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
fn bits(v: __m512) -> __m256i {
    // SAFETY: __m256bh and __m256i are the same 32 bytes.
    unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)) }
}

/// The 16 x 16 transpose of 16 rows of 16 lanes: pairs interleaved, then
/// quadruples, then 128-bit lanes gathered in two steps.
#[target_feature(enable = "avx512f")]
pub(super) fn transpose16(v: [__m512; 16]) -> [__m512; 16] {
    // a[2i], a[2i + 1]: rows 2i and 2i + 1 interleaved (low, high pairs).
    let a: [__m512; 16] = std::array::from_fn(|i| {
        let (x, y) = (v[i & !1], v[i | 1]);
        match i % 2 {
            0 => _mm512_unpacklo_ps(x, y),
            _ => _mm512_unpackhi_ps(x, y),
        }
    });
    // b[4g + c]: rows 4g..4g + 4, columns c + 4L in 128-bit lane L.
    let b: [__m512; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (x, y) = (
            _mm512_castps_pd(a[4 * g + c / 2]),
            _mm512_castps_pd(a[4 * g + 2 + c / 2]),
        );
        _mm512_castpd_ps(match c % 2 {
            0 => _mm512_unpacklo_pd(x, y),
            _ => _mm512_unpackhi_pd(x, y),
        })
    });
    // e[c], e[4 + c]: lanes 0, 2 / 1, 3 of b[c] and b[4 + c]; f likewise of
    // b[8 + c] and b[12 + c].
    let even_odd = |x: __m512, y: __m512| {
        (
            _mm512_shuffle_f32x4::<0x88>(x, y),
            _mm512_shuffle_f32x4::<0xdd>(x, y),
        )
    };
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let (e0, e1) = even_odd(b[c], b[4 + c]);
        let (f0, f1) = even_odd(b[8 + c], b[12 + c]);
        (out[c], out[c + 8]) = even_odd(e0, f0);
        (out[c + 4], out[c + 12]) = even_odd(e1, f1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transpose_transposes() {
        if !super::super::bf16::available() {
            return;
        }
        let rows: [__m512; 16] = std::array::from_fn(|r| {
            let values: [f32; 16] = std::array::from_fn(|c| (r * 16 + c) as f32);
            // SAFETY: 16 floats; AVX-512 (AMX).
            unsafe { _mm512_loadu_ps(values.as_ptr()) }
        });
        // SAFETY: AVX-512 (AMX).
        let columns = unsafe { transpose16(rows) };
        for (c, column) in columns.iter().enumerate() {
            let mut values = [0f32; 16];
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(values.as_mut_ptr(), *column) };
            let want: [f32; 16] = std::array::from_fn(|r| (r * 16 + c) as f32);
            assert_eq!(values, want, "column {c}");
        }
    }
}
