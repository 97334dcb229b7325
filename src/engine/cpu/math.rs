//! `exp` and `erf` for f32 written as plain arithmetic (no libm call, no
//! branch), so that loops over slices compile to vector instructions, and
//! a shorter `exp` in AVX-512 intrinsics for values bound for bf16.

/// e^x to within a few ulp for x in [-87, 88] (0 below, as f32 underflows
/// there anyway): x = n·ln2 + r with |r| <= ln2/2, e^r from its Taylor
/// series to the 7th power, 2^n put straight into the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let rounded = x * LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // `rounded` lies in [2^23, 2^24), where floats are whole numbers one
    // apart, so its bits minus ROUND's are n itself: 2^n's exponent bits
    // without `n as i32`, whose saturation and NaN handling kept the loops
    // around this scalar (a third of the attention's time).
    let biased = rounded
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// 2^t for 16 floats at once, to within 3e-6 (relative) for t below 128:
/// 2^t = 2^n 2^f with n = round(t), so |f| <= 1/2 and f = t - n exactly,
/// 2^f from a 4th-degree polynomial fitted to it (least squares weighted
/// toward the worst error, 2^0 = 1 exactly), AVX-512's `vscalefps` for 2^n: 9
/// instructions. A softmax folds log2(e) into its scale, so that this
/// replaces e^x, for values rounded to bf16 next (whose own rounding is up
/// to 4e-3). Below -150 the result is 0; NaN stays NaN.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub fn exp2_avx512(t: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const SERIES: [f32; 5] = [0.009_582_852, 0.055_906_43, 0.240_240_99, 0.693_124_2, 1.0];
    // The clamp keeps -inf from making f = -inf + inf; `max` returns its
    // second operand for NaN.
    let t = _mm512_max_ps(_mm512_set1_ps(-150.0), t);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_sub_ps(t, n);
    let mut p = _mm512_set1_ps(SERIES[0]);
    for &c in &SERIES[1..] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// e^x for 16 floats, to within 4e-7 (relative) for x below 88: [`exp`]'s
/// reduction and 7th-degree series, with AVX-512's own rounding and
/// scaling (`vrndscaleps`, `vscalefps`), for the f32 softmax.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub fn exp_avx512_f32(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // e^r's Taylor series from its highest coefficient down.
    const SERIES: [f32; 8] = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    // e^-104 is below f32's smallest subnormal; the clamp keeps -inf from
    // making r = -inf + inf. `max` returns its second operand for NaN.
    let x = _mm512_max_ps(_mm512_set1_ps(-104.0), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(SERIES[0]);
    for &c in &SERIES[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// erf(x) to within 5e-7 (absolute) everywhere: the odd-over-even rational
/// approximation on [-4, 4] that Eigen and XLA use for f32 (erf is ±1 in
/// f32 beyond).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_473_9e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(from: f32, to: f32) -> impl Iterator<Item = f32> {
        (0..=100_000).map(move |i| from + (to - from) * i as f32 / 100_000.0)
    }

    #[test]
    fn exp_is_within_a_few_ulp() {
        for x in grid(-87.0, 88.0) {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got}, not {want}"
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e4) < 1e-37);
        assert_eq!(exp(f32::NEG_INFINITY), exp(-87.0));
        assert!(exp(f32::NAN).is_nan());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_exps_are_within_3e_6_and_4e_7() {
        use std::arch::x86_64::*;
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        type Exp = unsafe fn(__m512) -> __m512;
        // The function, what it computes, its range, a value below which
        // it is 0, its bound.
        type Case = (Exp, fn(f64) -> f64, [f32; 2], f32, f64);
        let cases: [Case; 2] = [
            (exp2_avx512, f64::exp2, [-149.0, 127.0], -151.0, 3e-6),
            (exp_avx512_f32, f64::exp, [-100.0, 88.0], -104.5, 4e-7),
        ];
        for (exp, exact, [from, to], zero, bound) in cases {
            let exp16 = |x: [f32; 16]| -> [f32; 16] {
                // SAFETY: the CPU has AVX-512 (checked above); both arrays
                // are 16 floats.
                unsafe {
                    let mut out = [0f32; 16];
                    _mm512_storeu_ps(out.as_mut_ptr(), exp(_mm512_loadu_ps(x.as_ptr())));
                    out
                }
            };
            let xs: Vec<f32> = grid(from, to).collect();
            let mut worst = 0f64;
            for chunk in xs.chunks_exact(16) {
                let got = exp16(chunk.try_into().unwrap());
                for (&x, &got) in chunk.iter().zip(&got) {
                    let want = exact(x as f64);
                    // Subnormal results are bounded absolutely.
                    let err = ((got as f64 - want) / want.max(1e-38)).abs();
                    worst = worst.max(err);
                    assert!(err < bound, "exp({x}) = {got}, not {want}");
                }
            }
            println!("worst relative error {worst:e} (bound {bound:e})");
            let mut specials = [0f32; 16];
            specials[..5].copy_from_slice(&[0.0, -1e4, f32::NEG_INFINITY, f32::NAN, zero]);
            let specials = exp16(specials);
            assert_eq!(specials[0], 1.0);
            assert_eq!(specials[1], 0.0);
            assert_eq!(specials[2], 0.0);
            assert!(specials[3].is_nan());
            assert_eq!(specials[4], 0.0);
        }
    }

    #[test]
    fn erf_is_within_5e_7() {
        for x in grid(-6.0, 6.0) {
            let want = candle_core::cpu::erf::erf_f64(x as f64);
            let got = erf(x) as f64;
            assert!((got - want).abs() < 5e-7, "erf({x}) = {got}, not {want}");
        }
    }
}
