//! 2-D convolution on the CPU in f32, written for the shapes of Stable
//! Diffusion's UNet and VAE.
//!
//! candle's CPU convolution spends most of its time outside the matrix
//! product: it converts the input to NHWC and re-flattens the kernel on one
//! thread at every call. Here the kernel is used as stored (`[K, C*kh*kw]` is
//! already the left operand), the input is unfolded per channel in parallel,
//! and the product writes straight into the NCHW output with the bias in it.
//! 3x3 convolutions over maps with enough tiles go through Winograd's
//! F(4x4, 3x3) instead, which needs a quarter of the multiplications.
//! A 3x3 convolution of a nearest-2x-upsampled map (the VAE decoder's
//! up-convolutions, and with bf16 products the UNet's too) runs on the map
//! before upsampling ([`conv2d_upsampled`], [`conv2d_upsampled_bf16`]).
//! With bf16 products (`--dtype bf16`), 3x3 convolutions at stride 1 run
//! straight on AMX tiles where the CPU has them (`direct`; 1.2-2x faster
//! than F(2x2) on AMX), else Winograd's F(2x2, 3x3) on every map, with the
//! kernel transformed once at load; the others im2col.

#[cfg(target_arch = "x86_64")]
mod direct;
mod im2col;
mod winograd;

use super::bf16::PackedRhs;
use super::f32_products::PANEL;
use winograd::bf16_products::TransformedKernel;
use winograd::bf16_upsampled::SubPixelKernel;

/// Geometry of one convolution (NCHW input, `[K, C, kh, kw]` kernel, square
/// stride and zero padding, no dilation or groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.height * self.width
    }

    pub fn kernel_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel * self.kernel
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_height() * self.out_width()
    }
}

/// The algorithm [`conv2d`] uses for a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Unfold the input, one matrix product per band of rows.
    Im2col,
    /// Winograd F(4x4, 3x3).
    WinogradF4,
    /// Winograd F(2x2, 3x3): bf16's (see [`conv2d_bf16`]); in f32, the
    /// UNet's small maps (8x8 with guidance at 256 px).
    WinogradF2,
    /// 3x3 straight on AMX tiles, bf16 only (see `direct`).
    Direct,
}

/// What the three f32 algorithms are estimated to cost per output channel
/// and input channel, in units of one F(2x2) tile's products, fitted to a
/// probe of `conv2d_with` on 320 to 2560 channels at 4x4 to 32x32 (2-core
/// Zen 4, atelier's products; most within about 15%, im2col on 5x5 and
/// 7x7 maps up to 25% under):
/// - im2col: 0.46 per output pixel;
/// - F(2x2): 13 for the kernel's transform (16 positions) and 1 per 2x2
///   tile, the tiles rounded up to the products' [`PANEL`] columns;
/// - F(4x4): 29 for the kernel's transform (36 positions) and 1.8 per 4x4
///   tile, rounded likewise.
///
/// So the kernel's transform, paid on every call, sets the small maps'
/// choice: with guidance, 1280 channels at 8x8 took im2col 18.2 ms, F(4x4)
/// 27.6 (its 8 tiles fill a quarter of the products' columns) and F(2x2)
/// 13.7; at 4x4, 4.6 against F(2x2)'s 13.3.
fn estimated_cost(algorithm: Algorithm, shape: &ConvShape) -> f64 {
    let pixels = shape.batch * shape.out_height() * shape.out_width();
    let tiles = |side: usize| {
        let tiles =
            shape.batch * shape.out_height().div_ceil(side) * shape.out_width().div_ceil(side);
        tiles.next_multiple_of(PANEL) as f64
    };
    match algorithm {
        Algorithm::Im2col => 0.46 * pixels as f64,
        Algorithm::WinogradF2 => 13.0 + tiles(2),
        Algorithm::WinogradF4 => 29.0 + 1.8 * tiles(4),
        // bf16 only: never the f32 choice.
        Algorithm::Direct => f64::INFINITY,
    }
}

/// Input channels below which im2col beats Winograd at any size: with few
/// inputs the products Winograd saves are small and its output transform
/// (per output channel and tile) is most of its time. The VAE's first
/// convolutions: 3 -> 128 channels at 512x512 took 98-110 ms in F(4x4)
/// against 43-52 in im2col, 4 -> 512 at 64x64 3.3 against 1.8 ms.
const WINOGRAD_MIN_INPUT_CHANNELS: usize = 16;

/// The f32 algorithm for `shape`: the cheapest by `estimated_cost` of
/// those that compute it.
pub fn algorithm(shape: &ConvShape) -> Algorithm {
    if !winograd_fits(shape.kernel, shape.stride, shape.padding)
        || shape.in_channels < WINOGRAD_MIN_INPUT_CHANNELS
    {
        return Algorithm::Im2col;
    }
    [
        Algorithm::WinogradF4,
        Algorithm::WinogradF2,
        Algorithm::Im2col,
    ]
    .into_iter()
    .min_by(|a, b| estimated_cost(*a, shape).total_cmp(&estimated_cost(*b, shape)))
    .expect("three algorithms")
}

/// Whether Winograd's F(4x4, 3x3) computes this convolution: 3x3, stride 1,
/// padding 1.
fn winograd_fits(kernel: usize, stride: usize, padding: usize) -> bool {
    (kernel, stride, padding) == (3, 1, 1)
}

/// Whether the direct convolution on AMX tiles ([`Algorithm::Direct`])
/// computes a convolution of `in_channels` with a `kernel x kernel`
/// kernel at `stride` and `padding` on this CPU.
pub fn direct_fits(in_channels: usize, kernel: usize, stride: usize, padding: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return direct::fits(in_channels, kernel, stride, padding);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `output = conv(input, kernel) + bias`, all contiguous, NCHW.
pub fn conv2d(shape: &ConvShape, input: &[f32], kernel: &[f32], bias: &[f32]) -> Vec<f32> {
    conv2d_with(algorithm(shape), shape, input, kernel, bias)
}

/// [`conv2d`] with the algorithm chosen by the caller (for tests and
/// benchmarks; Winograd takes only 3x3, stride 1, padding 1).
pub fn conv2d_with(
    algorithm: Algorithm,
    shape: &ConvShape,
    input: &[f32],
    kernel: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    assert_operands(shape, input, kernel, bias);
    match algorithm {
        Algorithm::Im2col => im2col::conv2d(shape, input, im2col::Weights::F32(kernel), bias),
        Algorithm::WinogradF4 => winograd::conv2d::<winograd::F4>(shape, input, kernel, bias),
        Algorithm::WinogradF2 => winograd::conv2d::<winograd::F2>(shape, input, kernel, bias),
        Algorithm::Direct => panic!("the direct convolution has bf16 products only"),
    }
}

/// The f32 operands have the sizes `shape` gives them.
fn assert_operands(shape: &ConvShape, input: &[f32], kernel: &[f32], bias: &[f32]) {
    assert_eq!(input.len(), shape.input_len(), "input size");
    assert_eq!(kernel.len(), shape.kernel_len(), "kernel size");
    assert_eq!(bias.len(), shape.out_channels, "bias size");
}

/// Low-resolution tiles (5x5) below which [`conv2d_upsampled`] upsamples
/// and convolves instead: it transforms the kernel four times (once per
/// output phase) per call, which small maps do not pay back (probe: 640
/// channels at 16 -> 32 px, 32 tiles, 28 ms upsampled against 33.5; 512 at
/// 32 -> 64, 49 tiles, 40 against 38).
const SUB_PIXEL_MIN_TILES: usize = 48;

/// `conv(upsample2x(input), kernel) + bias` (nearest neighbour; 3x3,
/// stride 1, padding 1 on the upsampled map), NCHW: `shape` is the
/// convolution's on the map *before* upsampling, and the output is
/// `[batch, K, 2h, 2w]`. Large maps (the VAE decoder's) are convolved at
/// their own resolution, one 2x2 kernel per output phase
/// (`winograd::upsampled`); others are upsampled, then go to [`conv2d`].
pub fn conv2d_upsampled(
    shape: &ConvShape,
    input: &[f32],
    kernel: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    assert_operands(shape, input, kernel, bias);
    assert!(
        winograd_fits(shape.kernel, shape.stride, shape.padding),
        "up-convolutions are 3x3, stride 1, padding 1"
    );
    if winograd::upsampled::tiles(shape) >= SUB_PIXEL_MIN_TILES {
        return winograd::upsampled::conv2d(shape, input, kernel, bias);
    }
    let (upsampled, input) = upsampled_copy(shape, input);
    conv2d(&upsampled, &input, kernel, bias)
}

/// The input of `shape` upsampled 2x (nearest), with the convolution's
/// shape on it: the up-convolutions' path where they do not run on the
/// map as it is.
fn upsampled_copy(shape: &ConvShape, input: &[f32]) -> (ConvShape, Vec<f32>) {
    let upsampled = ConvShape {
        height: 2 * shape.height,
        width: 2 * shape.width,
        ..*shape
    };
    let input = super::upsample::upsample2x(input, shape.height, shape.width);
    (upsampled, input)
}

/// A convolution kernel rounded to bf16 and packed for bf16 products (see
/// `cpu::bf16`), made once when the model loads.
pub struct Bf16Kernel {
    pub out_channels: usize,
    pub in_channels: usize,
    pub size: usize,
    form: Bf16Form,
}

enum Bf16Form {
    /// For im2col: the kernel transposed, `[C*kh*kw, K]`.
    Im2col(PackedRhs),
    /// Winograd F(2x2, 3x3)'s transform of it.
    WinogradF2(TransformedKernel),
    /// Tap-major, for the direct convolution on AMX tiles.
    #[cfg(target_arch = "x86_64")]
    Direct(direct::DirectKernel),
    /// An up-convolution's: the four output phases' F(2x2, 2x2)
    /// transforms, for maps upsampled to exactly twice their size, and
    /// im2col's form for others (rare: latents not divisible by 8).
    SubPixel {
        sub_pixel: SubPixelKernel,
        plain: PackedRhs,
    },
}

impl Bf16Kernel {
    /// From `kernel` `[K, C, size, size]`, as checkpoints store it, for a
    /// convolution at `stride` and `padding`: direct on AMX tiles where it
    /// fits, else Winograd F(2x2, 3x3) where that fits (at every map size;
    /// see [`conv2d_bf16`]), else im2col.
    pub fn new(kernel: &[f32], dims: [usize; 3], stride: usize, padding: usize) -> Self {
        let [_, in_channels, size] = dims;
        let algorithm = if direct_fits(in_channels, size, stride, padding) {
            Algorithm::Direct
        } else if winograd_fits(size, stride, padding) {
            Algorithm::WinogradF2
        } else {
            Algorithm::Im2col
        };
        Self::for_algorithm(algorithm, kernel, dims)
    }

    /// For a 3x3 convolution (stride 1, padding 1) of a nearest-upsampled
    /// map, run by [`conv2d_upsampled_bf16`]: sub-pixel, unless it runs
    /// direct on AMX tiles (where the sub-pixel path has not been
    /// measured).
    pub fn for_upsampling(kernel: &[f32], dims: [usize; 3]) -> Self {
        let [out_channels, in_channels, size] = dims;
        if direct_fits(in_channels, size, 1, 1) || !winograd_fits(size, 1, 1) {
            return Self::new(kernel, dims, 1, 1);
        }
        let depth = in_channels * size * size;
        assert_eq!(kernel.len(), out_channels * depth, "kernel size");
        Self {
            out_channels,
            in_channels,
            size,
            form: Bf16Form::SubPixel {
                sub_pixel: SubPixelKernel::new(kernel, out_channels, in_channels),
                plain: PackedRhs::from_transposed(kernel, depth, out_channels),
            },
        }
    }

    /// The form `algorithm` takes (im2col, or F(2x2) or direct for a 3x3
    /// kernel at stride 1 and padding 1, direct for a multiple of 32 input
    /// channels on AMX; F(4x4) has no bf16 form), for benchmarks and tests.
    pub fn for_algorithm(
        algorithm: Algorithm,
        kernel: &[f32],
        [out_channels, in_channels, size]: [usize; 3],
    ) -> Self {
        let depth = in_channels * size * size;
        assert_eq!(kernel.len(), out_channels * depth, "kernel size");
        let form = match algorithm {
            Algorithm::Im2col => {
                Bf16Form::Im2col(PackedRhs::from_transposed(kernel, depth, out_channels))
            }
            Algorithm::WinogradF2 => {
                assert_eq!(size, 3, "Winograd takes 3x3 kernels");
                Bf16Form::WinogradF2(TransformedKernel::new(kernel, out_channels, in_channels))
            }
            Algorithm::WinogradF4 => panic!("F(4x4) rounds too coarsely for bf16 products"),
            #[cfg(target_arch = "x86_64")]
            Algorithm::Direct => {
                assert!(
                    direct::fits(in_channels, size, 1, 1),
                    "the direct convolution takes 3x3 kernels of a multiple of 32 channels, on AMX"
                );
                Bf16Form::Direct(direct::DirectKernel::new(kernel, out_channels, in_channels))
            }
            #[cfg(not(target_arch = "x86_64"))]
            Algorithm::Direct => panic!("the direct convolution runs on AMX only"),
        };
        Self {
            out_channels,
            in_channels,
            size,
            form,
        }
    }
}

/// [`conv2d`] with the kernel rounded to bf16 and bf16 products (f32
/// sums), in the form `kernel` was made for ([`Bf16Kernel::new`]). In
/// `cargo bench --bench cpu_kernels -- convolution`, F(2x2) beat bf16
/// im2col on every 3x3 shape of the UNet, and F(4x4) in f32 on the large
/// maps; on AMX, direct beat F(2x2) on the VAE's maps (128 channels at
/// 256x256 19.6 against 36.7 ms, 512 at 64x64 13.8 against 16.6) and on
/// most of the UNet's, level with it on a few (1920 -> 640 at 16x16,
/// 2560 -> 1280 at 8x8: the products wait on the kernel's bytes there).
pub fn conv2d_bf16(
    shape: &ConvShape,
    input: &[f32],
    kernel: &Bf16Kernel,
    bias: &[f32],
) -> Vec<f32> {
    assert_eq!(input.len(), shape.input_len(), "input size");
    assert_eq!(
        (kernel.out_channels, kernel.in_channels, kernel.size),
        (shape.out_channels, shape.in_channels, shape.kernel),
        "kernel shape"
    );
    assert_eq!(bias.len(), shape.out_channels, "bias size");
    match &kernel.form {
        Bf16Form::WinogradF2(transformed) => {
            assert!(
                winograd_fits(shape.kernel, shape.stride, shape.padding),
                "Winograd takes stride 1 and padding 1"
            );
            winograd::bf16_products::conv2d(shape, input, transformed, bias)
        }
        Bf16Form::Im2col(packed) | Bf16Form::SubPixel { plain: packed, .. } => {
            im2col::conv2d(shape, input, im2col::Weights::Bf16(packed), bias)
        }
        #[cfg(target_arch = "x86_64")]
        Bf16Form::Direct(direct) => {
            assert!(
                winograd_fits(shape.kernel, shape.stride, shape.padding),
                "the direct convolution takes stride 1 and padding 1"
            );
            direct::conv2d(shape, input, direct, bias)
        }
    }
}

/// [`conv2d_upsampled`] with bf16 products: `conv(upsample2x(input),
/// kernel) + bias`, `shape` the convolution's on the map before
/// upsampling. A kernel made [`Bf16Kernel::for_upsampling`] runs on that
/// map (`winograd::bf16_upsampled`); others on the upsampled copy.
pub fn conv2d_upsampled_bf16(
    shape: &ConvShape,
    input: &[f32],
    kernel: &Bf16Kernel,
    bias: &[f32],
) -> Vec<f32> {
    if let Bf16Form::SubPixel { sub_pixel, .. } = &kernel.form {
        assert!(
            winograd_fits(shape.kernel, shape.stride, shape.padding),
            "up-convolutions are 3x3, stride 1, padding 1"
        );
        return winograd::bf16_upsampled::conv2d(shape, input, sub_pixel, bias);
    }
    let (upsampled, input) = upsampled_copy(shape, input);
    conv2d_bf16(&upsampled, &input, kernel, bias)
}

/// The straightforward loop nest, the reference the tests hold the fast
/// paths to.
#[cfg(test)]
pub(crate) fn conv2d_reference(
    s: &ConvShape,
    input: &[f32],
    kernel: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let (ho, wo) = (s.out_height(), s.out_width());
    let mut out = vec![0f32; s.output_len()];
    for n in 0..s.batch {
        for k in 0..s.out_channels {
            for y in 0..ho {
                for x in 0..wo {
                    let mut acc = bias[k] as f64;
                    for c in 0..s.in_channels {
                        for i in 0..s.kernel {
                            for j in 0..s.kernel {
                                let iy = (y * s.stride + i) as isize - s.padding as isize;
                                let ix = (x * s.stride + j) as isize - s.padding as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= s.height as isize
                                    || ix >= s.width as isize
                                {
                                    continue;
                                }
                                let v = input[((n * s.in_channels + c) * s.height + iy as usize)
                                    * s.width
                                    + ix as usize];
                                let w =
                                    kernel[((k * s.in_channels + c) * s.kernel + i) * s.kernel + j];
                                acc += v as f64 * w as f64;
                            }
                        }
                    }
                    out[((n * s.out_channels + k) * ho + y) * wo + x] = acc as f32;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Largest difference from the reference, relative to the output's
    /// largest magnitude.
    fn relative_error(shape: ConvShape, algorithm: Algorithm) -> f32 {
        relative_error_of(shape, |input, kernel, bias| {
            conv2d_with(algorithm, &shape, input, kernel, bias)
        })
    }

    /// [`relative_error`] of `conv(input, kernel, bias)`, random operands.
    pub(super) fn relative_error_of(
        shape: ConvShape,
        conv: impl Fn(&[f32], &[f32], &[f32]) -> Vec<f32>,
    ) -> f32 {
        let input = random(shape.input_len(), 1);
        let kernel = random(shape.kernel_len(), 2);
        let bias = random(shape.out_channels, 3);
        let want = conv2d_reference(&shape, &input, &kernel, &bias);
        max_relative_error(&conv(&input, &kernel, &bias), &want)
    }

    /// The largest difference of `got` from `want`, relative to `want`'s
    /// largest magnitude.
    fn max_relative_error(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        err / scale
    }

    pub(super) fn shape(batch: usize, c: usize, h: usize, w: usize, k: usize) -> ConvShape {
        ConvShape {
            batch,
            in_channels: c,
            height: h,
            width: w,
            out_channels: k,
            kernel: 3,
            stride: 1,
            padding: 1,
        }
    }

    /// Shapes only im2col takes: strided, unpadded, 1x1.
    fn strided_and_pointwise() -> [ConvShape; 2] {
        [
            ConvShape {
                stride: 2,
                padding: 0,
                ..shape(2, 4, 9, 8, 3)
            },
            ConvShape {
                kernel: 1,
                padding: 0,
                ..shape(1, 7, 5, 6, 2)
            },
        ]
    }

    #[test]
    fn im2col_matches_the_reference() {
        // Output rows that cross, or span, 32-column panels.
        for s in [
            shape(2, 5, 9, 7, 6),
            shape(1, 3, 1, 1, 4),
            shape(1, 3, 5, 40, 4),
        ]
        .into_iter()
        .chain(strided_and_pointwise())
        {
            let err = relative_error(s, Algorithm::Im2col);
            assert!(err < 1e-6, "{s:?}: {err}");
        }
    }

    #[test]
    fn bf16_kernels_match_the_reference_within_bf16_rounding() {
        if !super::super::bf16::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // 3x3 at stride 1 (Winograd F(2x2)): partial tiles, odd channel
        // counts, more than one panel of output channels, a map of two
        // bands (600 tiles), a map 70 wide (rows of 8 tiles read at its
        // edges and inside it), one 33 wide whose last tile of each row
        // sticks out, with output channels in lanes of 8 and 3 more.
        // Strided and pointwise (im2col): widths that
        // are multiples of 8 (packed straight from the input) and others
        // (unfolded first).
        for s in [
            shape(2, 5, 9, 7, 6),
            shape(1, 40, 8, 8, 33),
            shape(2, 3, 5, 16, 4),
            shape(1, 2, 80, 30, 3),
            shape(1, 3, 6, 70, 4),
            shape(2, 5, 7, 33, 19),
            ConvShape {
                stride: 2,
                ..shape(1, 40, 8, 16, 33)
            },
        ]
        .into_iter()
        .chain(strided_and_pointwise())
        {
            let err = relative_error_of(s, |input, kernel, bias| {
                let dims = [s.out_channels, s.in_channels, s.kernel];
                let packed = Bf16Kernel::new(kernel, dims, s.stride, s.padding);
                conv2d_bf16(&s, input, &packed, bias)
            });
            // Both operands rounded to 8 significant bits: ~2^-9 each.
            assert!(err < 1e-2, "{s:?}: {err}");
        }
    }

    #[test]
    fn winograd_matches_the_reference_on_every_edge_case() {
        // Sizes that are multiples of 4, that leave partial tiles, a map
        // smaller than one tile, and channel counts that are not multiples
        // of anything. Maps 32 and 70 wide have rows of 8 tiles side by
        // side, which are read and written a row at a time: at the image's
        // edges, inside it, and (70) beside tiles that wrap to the next row.
        // 130 input channels are more than one chunk of the products, the
        // 100x100 maps more than one band of tiles.
        for s in [
            shape(2, 5, 8, 8, 6),
            shape(1, 130, 20, 20, 4),
            shape(2, 3, 100, 100, 2),
            shape(1, 3, 9, 7, 4),
            shape(2, 17, 6, 11, 9),
            shape(1, 2, 1, 1, 3),
            shape(1, 2, 3, 2, 3),
            shape(2, 4, 32, 32, 3),
            shape(1, 3, 37, 70, 5),
        ] {
            for algorithm in [Algorithm::WinogradF4, Algorithm::WinogradF2] {
                let err = relative_error(s, algorithm);
                assert!(err < 1e-5, "{s:?} {algorithm:?}: {err}");
            }
        }
    }

    #[test]
    fn up_convolutions_match_upsampling_then_convolving() {
        // Maps whose sides are and are not multiples of 5 (the sub-pixel
        // path's tiles; 5 and 20 need a last tile for one output phase
        // only), maps smaller than a tile, two images, more input channels
        // than one chunk (130 > 128), 8 tiles side by side inside the
        // output. Each through the sub-pixel path, and through the entry
        // point, which sends the small maps to the upsampled copy.
        for (s, sub_pixel) in [
            (shape(1, 3, 5, 5, 4), false),
            (shape(2, 3, 1, 1, 2), false),
            (shape(1, 2, 4, 9, 3), false),
            (shape(2, 5, 20, 33, 6), true),
            (shape(1, 130, 40, 40, 3), true),
            (shape(1, 4, 37, 41, 19), true),
            // 17 tiles per row: rows of 8 tiles inside the output, which
            // are written a row at a time.
            (shape(1, 3, 23, 80, 2), true),
        ] {
            assert_eq!(
                winograd::upsampled::tiles(&s) >= SUB_PIXEL_MIN_TILES,
                sub_pixel
            );
            for path in [winograd::upsampled::conv2d, conv2d_upsampled] {
                let err = upsampled_error(s, |input, kernel, bias| path(&s, input, kernel, bias));
                // F(4x4) on the upsampled map, for comparison: 0.9e-5 at
                // 130 channels, where this reads 1.0e-5.
                assert!(err < 2e-5, "{s:?}: {err}");
            }
        }
    }

    /// Like [`relative_error_of`] for an up-convolution of shape `s` (on
    /// the map before upsampling), against upsampling then the reference.
    fn upsampled_error(s: ConvShape, conv: impl Fn(&[f32], &[f32], &[f32]) -> Vec<f32>) -> f32 {
        let input = random(s.input_len(), 1);
        let kernel = random(s.kernel_len(), 2);
        let bias = random(s.out_channels, 3);
        let (upsampled, big) = upsampled_copy(&s, &input);
        let want = conv2d_reference(&upsampled, &big, &kernel, &bias);
        max_relative_error(&conv(&input, &kernel, &bias), &want)
    }

    #[test]
    fn bf16_up_convolutions_match_upsampling_then_convolving() {
        if !super::super::bf16::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // Maps of one pixel, of odd sides (a last tile half outside), two
        // images, more tiles than one band (400 > 128), rows of 8 tiles
        // side by side (stored a row at a time: 16 and 33 wide, 15 wide
        // with the row's last 2 pixels outside), output channels in lanes
        // of 8 and 3 more, an odd number of input channels.
        for s in [
            shape(2, 3, 1, 1, 2),
            shape(1, 2, 4, 9, 3),
            shape(2, 5, 20, 33, 6),
            shape(1, 130, 40, 40, 3),
            shape(1, 4, 37, 41, 19),
            shape(2, 17, 16, 16, 40),
            shape(1, 3, 6, 15, 9),
        ] {
            let dims = [s.out_channels, s.in_channels, 3];
            let err = upsampled_error(s, |input, kernel, bias| {
                let packed = Bf16Kernel::for_upsampling(kernel, dims);
                conv2d_upsampled_bf16(&s, input, &packed, bias)
            });
            // Both operands rounded to 8 significant bits: ~2^-9 each.
            assert!(err < 1e-2, "{s:?}: {err}");
        }
    }

    #[test]
    fn winograd_stays_accurate_over_many_channels() {
        // The UNet's widest 3x3 convolution sums 2560 channels.
        let err = relative_error(shape(1, 2560, 8, 8, 4), Algorithm::WinogradF4);
        assert!(err < 2e-5, "{err}");
    }

    #[test]
    fn the_choice_follows_the_shape() {
        assert_eq!(
            algorithm(&shape(2, 320, 32, 32, 320)),
            Algorithm::WinogradF4
        );
        // Measured (see estimated_cost): F(2x2) where F(4x4)'s tiles
        // would not fill the products, im2col where F(2x2)'s would not.
        assert_eq!(
            algorithm(&shape(2, 1280, 8, 8, 1280)),
            Algorithm::WinogradF2
        );
        assert_eq!(algorithm(&shape(1, 1280, 8, 8, 1280)), Algorithm::Im2col);
        assert_eq!(
            algorithm(&shape(1, 640, 16, 16, 640)),
            Algorithm::WinogradF2
        );
        assert_eq!(
            algorithm(&shape(2, 640, 12, 12, 640)),
            Algorithm::WinogradF4
        );
        assert_eq!(algorithm(&shape(2, 1280, 4, 4, 1280)), Algorithm::Im2col);
        // The VAE's input convolutions: few channels in.
        assert_eq!(algorithm(&shape(1, 3, 512, 512, 128)), Algorithm::Im2col);
        assert_eq!(
            algorithm(&shape(1, 128, 512, 512, 3)),
            Algorithm::WinogradF4
        );
        let strided = ConvShape {
            stride: 2,
            ..shape(2, 320, 32, 32, 320)
        };
        assert_eq!(algorithm(&strided), Algorithm::Im2col);
    }
}
