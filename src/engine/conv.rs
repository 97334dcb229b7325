//! A 2-D convolution layer that runs [`super::cpu::conv`] for f32 on the CPU
//! (with bf16 products when the model is built for them, see
//! [`super::blocks::with_bf16_products`]), on CUDA what
//! [`super::cuda::conv_backend`] picks, and candle's own convolution
//! everywhere else (Metal, half precision on the CPU).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::blocks;
use super::cpu::conv::Bf16Kernel;
use super::cpu::ops;
use super::cuda;
use super::profile;

pub struct Conv2d {
    weights: Weights,
    /// (in, out, kernel side), for the profile's count.
    dims: [usize; 3],
    stride: usize,
    padding: usize,
}

enum Weights {
    Candle(candle_nn::Conv2d),
    /// Only the packed kernel is kept: the f32 one is not needed again.
    CpuBf16 {
        kernel: Bf16Kernel,
        bias: Tensor,
    },
}

impl Conv2d {
    /// `weight` `[cout, cin, k, k]` and `bias` `[cout]` from `vb`, as
    /// `candle_nn::conv2d` reads them.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Self::build(vb, [cin, cout, kernel, stride, padding], false)
    }

    /// A 3x3 convolution (stride 1, padding 1) for
    /// [`forward_upsampled`](Self::forward_upsampled): with bf16 products
    /// on the CPU its kernel is also transformed to run on the map before
    /// upsampling (`cpu::conv::Bf16Kernel::for_upsampling`).
    pub fn new_upsampling(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Self::build(vb, [cin, cout, 3, 1, 1], true)
    }

    fn build(
        vb: VarBuilder,
        [cin, cout, kernel, stride, padding]: [usize; 5],
        upsampling: bool,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let conv = candle_nn::conv2d(cin, cout, kernel, cfg, vb)?;
        let bias = conv.bias().expect("candle_nn::conv2d reads a bias").clone();
        let weights = if ops::applies(conv.weight()) && blocks::bf16_products() {
            let values = conv.weight().flatten_all()?.to_vec1::<f32>()?;
            let dims = [cout, cin, kernel];
            let kernel = match upsampling {
                true => Bf16Kernel::for_upsampling(&values, dims),
                false => Bf16Kernel::new(&values, dims, stride, padding),
            };
            Weights::CpuBf16 { kernel, bias }
        } else {
            Weights::Candle(conv)
        };
        Ok(Self {
            weights,
            dims: [cin, cout, kernel],
            stride,
            padding,
        })
    }

    /// Counts a direct convolution's arithmetic for `batch` outputs of
    /// `height x width`, whatever algorithm runs it.
    fn count_flops(&self, batch: usize, height: usize, width: usize) {
        let [cin, cout, kernel] = self.dims;
        profile::count_flops(2 * batch * height * width * cout * cin * kernel * kernel);
    }

    /// This convolution of `xs` upsampled (nearest neighbour) to `height x
    /// width`. On the CPU, a 3x3 convolution of a map upsampled to exactly
    /// twice its size runs on the map as it is, without the upsampled copy
    /// (see `cpu::conv::conv2d_upsampled`; with bf16 products, where the
    /// layer was made [`new_upsampling`](Self::new_upsampling)).
    pub fn forward_upsampled(&self, xs: &Tensor, height: usize, width: usize) -> Result<Tensor> {
        let (b, _, h, w) = xs.dims4()?;
        let (out_h, out_w) = self.output_size(height, width);
        self.count_flops(b, out_h, out_w);
        if let Weights::CpuBf16 { kernel, bias } = &self.weights {
            let up_convolution = kernel.size == 3 && (self.stride, self.padding) == (1, 1);
            if (height, width) == (2 * h, 2 * w) && up_convolution {
                return ops::conv2d_upsampled_bf16(xs, kernel, bias);
            }
        }
        if let Weights::Candle(conv) = &self.weights {
            let weight = conv.weight();
            let square3x3 = weight.dims().get(2..) == Some(&[3, 3][..]);
            if ops::applies(xs)
                && (height, width) == (2 * h, 2 * w)
                && square3x3
                && (self.stride, self.padding) == (1, 1)
            {
                let bias = conv.bias().expect("read with a bias");
                return ops::conv2d_upsampled(xs, weight, bias);
            }
        }
        self.forward_uncounted(&blocks::upsample_nearest(xs, height, width)?)
    }

    /// The output's (height, width) for an input of `height x width`.
    fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        let [_, _, kernel] = self.dims;
        let side = |x: usize| (x + 2 * self.padding).saturating_sub(kernel) / self.stride + 1;
        (side(height), side(width))
    }

    /// [`Module::forward`] without the profile's count.
    fn forward_uncounted(&self, xs: &Tensor) -> Result<Tensor> {
        let (s, p) = (self.stride, self.padding);
        let conv = match &self.weights {
            Weights::CpuBf16 { kernel, bias } => return ops::conv2d_bf16(xs, kernel, bias, s, p),
            Weights::Candle(conv) => conv,
        };
        let (w, b) = (conv.weight(), conv.bias().expect("read with a bias"));
        if ops::applies(xs) {
            ops::conv2d(xs, w, b, s, p)
        } else if cuda::applies(xs) {
            match cuda::conv_backend()? {
                cuda::ConvBackend::Cudnn => cuda::cudnn_conv2d(xs, w, b, s, p),
                cuda::ConvBackend::Im2col => cuda::conv2d(xs, w, b, s, p),
                cuda::ConvBackend::Candle => conv.forward(xs),
            }
        } else {
            conv.forward(xs)
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if profile::enabled() {
            let (b, _, h, w) = xs.dims4()?;
            let (out_h, out_w) = self.output_size(h, w);
            self.count_flops(b, out_h, out_w);
        }
        self.forward_uncounted(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// The CPU path gives what candle's own convolution gives, for each
    /// shape the UNet and VAE use; with bf16 products, within bf16's
    /// rounding.
    #[test]
    fn matches_candle_on_the_cpu() -> Result<()> {
        let dev = Device::Cpu;
        for (cin, cout, k, stride, padding, size) in [
            (4, 8, 3, 1, 1, 12),
            (8, 8, 3, 2, 1, 12),
            (8, 6, 3, 2, 0, 13),
            (6, 4, 1, 1, 0, 5),
        ] {
            let map = VarMap::new();
            let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
            let conv = Conv2d::new(vb.clone(), cin, cout, k, stride, padding)?;
            // The same variables (a VarMap hands out what it holds).
            let cfg = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let candle = candle_nn::conv2d(cin, cout, k, cfg, vb.clone())?;
            let xs = Tensor::randn(0f32, 1., (2, cin, size, size + 1), &dev)?;
            let want = candle.forward(&xs)?;
            let relative_error = |got: Tensor| -> Result<f32> {
                assert_eq!(got.dims(), want.dims());
                let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
                Ok((got - &want)?.abs()?.max_all()?.to_scalar::<f32>()? / scale)
            };
            let err = relative_error(conv.forward(&xs)?)?;
            assert!(err < 1e-5, "{cin}->{cout} k{k} s{stride} p{padding}: {err}");
            if crate::engine::cpu::bf16::available() {
                let conv = blocks::with_bf16_products(true, || {
                    Conv2d::new(vb, cin, cout, k, stride, padding)
                })?;
                assert!(matches!(conv.weights, Weights::CpuBf16 { .. }));
                assert_within_bf16_rounding(
                    &conv.forward(&xs)?,
                    &want,
                    &format!("{cin}->{cout} k{k}"),
                )?;
            }
        }
        Ok(())
    }

    /// An up-convolution gives candle's upsampling then convolution: on a
    /// map large enough for the sub-pixel path (40x41, 2 images), a small
    /// one, and a target that is not twice the size (odd latents in the
    /// UNet), which takes candle's upsampling; in f32 and, made
    /// `new_upsampling`, with bf16 products (the last through im2col's
    /// form of the kernel).
    #[test]
    fn up_convolution_matches_candle_on_the_cpu() -> Result<()> {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
        let conv = Conv2d::new(vb.clone(), 5, 3, 3, 1, 1)?;
        let bf16 = crate::engine::cpu::bf16::available()
            .then(|| blocks::with_bf16_products(true, || Conv2d::new_upsampling(vb.clone(), 5, 3)))
            .transpose()?;
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let candle = candle_nn::conv2d(5, 3, 3, cfg, vb)?;
        for (h, w, height, width) in [(40, 41, 80, 82), (6, 7, 12, 14), (5, 5, 11, 10)] {
            let xs = Tensor::randn(0f32, 1., (2, 5, h, w), &dev)?;
            let want = candle.forward(&xs.upsample_nearest2d(height, width)?)?;
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            let relative_error = |got: Tensor| -> Result<f32> {
                assert_eq!(got.dims(), want.dims());
                Ok((got - &want)?.abs()?.max_all()?.to_scalar::<f32>()? / scale)
            };
            let err = relative_error(conv.forward_upsampled(&xs, height, width)?)?;
            assert!(err < 2e-5, "{h}x{w} -> {height}x{width}: {err}");
            if let Some(conv) = &bf16 {
                assert!(matches!(conv.weights, Weights::CpuBf16 { .. }));
                let got = conv.forward_upsampled(&xs, height, width)?;
                assert_within_bf16_rounding(&got, &want, &format!("{h}x{w} -> {height}x{width}"))?;
            }
        }
        Ok(())
    }

    /// The profile counts a direct convolution's arithmetic once per call,
    /// whichever path runs it: a strided one, an up-convolution on the map
    /// before upsampling, and one on candle's upsampled copy.
    #[test]
    fn counts_its_arithmetic_for_the_profile() -> Result<()> {
        use crate::engine::profile::flops_of;
        let dev = Device::Cpu;
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
        let strided = Conv2d::new(vb.pp("strided"), 8, 6, 3, 2, 0)?;
        let xs = Tensor::randn(0f32, 1., (2, 8, 13, 14), &dev)?;
        // 6x6 outputs of 6 channels, each 8 x 9 multiply-adds.
        assert_eq!(flops_of(|| strided.forward(&xs))?, 2 * 2 * 36 * 6 * 8 * 9);
        let up = Conv2d::new(vb.pp("up"), 5, 3, 3, 1, 1)?;
        let xs = Tensor::randn(0f32, 1., (2, 5, 6, 7), &dev)?;
        let counted = flops_of(|| up.forward_upsampled(&xs, 12, 14))?;
        assert_eq!(counted, 2 * 2 * (12 * 14) * 3 * 5 * 9);
        let counted = flops_of(|| up.forward_upsampled(&xs, 11, 15))?;
        assert_eq!(counted, 2 * 2 * (11 * 15) * 3 * 5 * 9);
        Ok(())
    }

    /// bf16 products against f32's: the rms difference within 1% of the
    /// rms output (both operands rounded to 8 significant bits, ~2^-9
    /// each, Winograd's transforms about doubling it), and no output off by
    /// more than 3% of the largest. The inputs are candle's unseeded random
    /// numbers, so the bounds leave room: over 300 draws of these tests'
    /// shapes the rms reached 0.58% and the largest difference 1.43% (the
    /// sub-pixel path, whose sums over 5 channels have a long tail). A
    /// wrong transform or a misplaced store is off by tens of percent.
    fn assert_within_bf16_rounding(got: &Tensor, want: &Tensor, case: &str) -> Result<()> {
        assert_eq!(got.dims(), want.dims());
        let diff = (got - want)?;
        let rms =
            |t: &Tensor| -> Result<f32> { Ok(t.sqr()?.mean_all()?.to_scalar::<f32>()?.sqrt()) };
        let rms_error = rms(&diff)? / rms(want)?;
        let max_error = diff.abs()?.max_all()?.to_scalar::<f32>()?
            / want.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            rms_error < 1e-2 && max_error < 3e-2,
            "bf16 {case}: rms {rms_error}, max {max_error}"
        );
        Ok(())
    }
}
