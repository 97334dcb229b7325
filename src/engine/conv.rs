//! A 2-D convolution layer that runs [`super::cpu_conv`] for f32 on the CPU
//! and candle's own convolution everywhere else (CUDA, Metal, half
//! precision on the CPU).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::cpu_conv::{self, ConvShape};

pub struct Conv2d {
    inner: candle_nn::Conv2d,
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
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
        let inner = candle_nn::conv2d(cin, cout, kernel, cfg, vb)?;
        let weight = inner.weight().clone();
        let bias = inner.bias().expect("conv2d reads a bias").clone();
        Ok(Self {
            inner,
            weight,
            bias,
            kernel,
            stride,
            padding,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if !xs.device().is_cpu() || xs.dtype() != DType::F32 {
            return self.inner.forward(xs);
        }
        let op = CpuConv {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        };
        xs.contiguous()?
            .apply_op3_no_bwd(&self.weight, &self.bias, &op)
    }
}

/// The op candle hands the three CPU buffers to.
struct CpuConv {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl CustomOp3 for CpuConv {
    fn name(&self) -> &'static str {
        "atelier-cpu-conv2d"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, in_channels, height, width) = input_layout.shape().dims4()?;
        let (out_channels, weight_in, kh, kw) = weight_layout.shape().dims4()?;
        if weight_in != in_channels || kh != self.kernel || kw != self.kernel {
            candle_core::bail!(
                "conv2d: input {:?} does not fit kernel {:?}",
                input_layout.shape(),
                weight_layout.shape()
            );
        }
        let shape = ConvShape {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        };
        let out = cpu_conv::conv2d(
            &shape,
            contiguous(input, input_layout)?,
            contiguous(weight, weight_layout)?,
            contiguous(bias, bias_layout)?,
        );
        let dims = (batch, out_channels, shape.out_height(), shape.out_width());
        Ok((CpuStorage::F32(out), dims.into()))
    }
}

/// The f32 elements of a contiguous CPU tensor.
fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("conv2d: the CPU path takes f32 only");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("conv2d: expected a contiguous tensor"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
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
