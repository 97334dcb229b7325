//! `exp` and `erf` for f32 written as plain arithmetic (no libm call, no
//! branch), so that loops over slices compile to vector instructions.

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

    #[test]
    fn erf_is_within_5e_7() {
        for x in grid(-6.0, 6.0) {
            let want = candle_core::cpu::erf::erf_f64(x as f64);
            let got = erf(x) as f64;
            assert!((got - want).abs() < 5e-7, "erf({x}) = {got}, not {want}");
        }
    }
}
