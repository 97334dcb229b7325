//! A 2-D convolution layer that runs [`super::cpu::conv`] for f32 on the CPU,
//! on CUDA what [`super::cuda::conv_backend`] picks, and candle's own
//! convolution everywhere else (Metal, half precision on the CPU).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::cpu::ops;
use super::cuda;

pub struct Conv2d {
    inner: candle_nn::Conv2d,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// `weight` [cout, cin, k, k] and `bias` [cout] from `vb`, as
    /// `candle_nn::conv2d` reads them.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        Ok(Self {
            inner: candle_nn::conv2d(cin, cout, kernel, cfg, vb)?,
            stride,
            padding,
        })
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> &Tensor {
        self.inner.bias().expect("candle_nn::conv2d reads a bias")
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if ops::applies(xs) {
            ops::conv2d(xs, self.weight(), self.bias(), self.stride, self.padding)
        } else if cuda::applies(xs) {
            let (w, b, s, p) = (self.weight(), self.bias(), self.stride, self.padding);
            match cuda::conv_backend()? {
                cuda::ConvBackend::Cudnn => cuda::cudnn_conv2d(xs, w, b, s, p),
                cuda::ConvBackend::Im2col => cuda::conv2d(xs, w, b, s, p),
                cuda::ConvBackend::Candle => self.inner.forward(xs),
            }
        } else {
            self.inner.forward(xs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// The CPU path gives what candle's own convolution gives, for each
    /// shape the UNet and VAE use.
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
            let conv = Conv2d::new(vb, cin, cout, k, stride, padding)?;
            let xs = Tensor::randn(0f32, 1., (2, cin, size, size + 1), &dev)?;
            let want = conv.inner.forward(&xs)?;
            let got = conv.forward(&xs)?;
            assert_eq!(got.dims(), want.dims());
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
            assert!(err < 1e-5, "{cin}->{cout} k{k} s{stride} p{padding}: {err}");
        }
        Ok(())
    }
}
