//! Where convolutions run on CUDA (`conv_backend`), and one of the ways:
//! atelier's im2col (`im2col.cu`) and one batched matrix product that
//! lands in NCHW, written to replace candle's CUDA im2col, whose per-value
//! 64-bit index arithmetic is the likely cause of the VAE decode's 5x gap to
//! PyTorch (the profile puts it in 3x3 convolutions).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The ways a convolution can run on CUDA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvBackend {
    /// candle's own: im2col + cuBLAS, or its cuDNN call (`cudnn` builds),
    /// which redoes its setup at every call.
    Candle,
    /// atelier's im2col + one batched product ([`conv2d`]).
    Im2col,
    /// cuDNN with its setup kept per shape ([`super::cudnn_conv2d`]).
    Cudnn,
}

/// Where convolutions run: `ATELIER_CUDA_CONV=cudnn|im2col|candle`, or by
/// default cuDNN in builds with it (`cudnn` feature) and candle's
/// otherwise. Neither of atelier's two has run on a GPU yet
/// (`tools/gpu_session.sh` measures them against candle's), so a build
/// without cuDNN keeps candle's.
pub fn conv_backend() -> Result<ConvBackend> {
    match std::env::var("ATELIER_CUDA_CONV").as_deref() {
        Ok("cudnn") if cfg!(feature = "cudnn") => Ok(ConvBackend::Cudnn),
        Ok("cudnn") => candle_core::bail!(
            "ATELIER_CUDA_CONV=cudnn: this atelier was built without cuDNN (the `cudnn` feature)"
        ),
        Ok("im2col") => Ok(ConvBackend::Im2col),
        Ok("candle") => Ok(ConvBackend::Candle),
        Ok(other) => {
            candle_core::bail!("ATELIER_CUDA_CONV={other}: expected cudnn, im2col or candle")
        }
        Err(_) if cfg!(feature = "cudnn") => Ok(ConvBackend::Cudnn),
        Err(_) => Ok(ConvBackend::Candle),
    }
}

/// The sizes of a convolution of xs `[b, c, h, w]` by weight `[co, c, k,
/// k]`, output `[b, co, oh, ow]`.
pub(super) struct ConvSizes {
    pub b: usize,
    pub c: usize,
    pub co: usize,
    pub k: usize,
    pub oh: usize,
    pub ow: usize,
}

/// [`ConvSizes`] of `xs` and `weight` at `stride` and `padding`, or why
/// they do not make a convolution (`op` names it in the error).
pub(super) fn conv_sizes(
    op: &str,
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<ConvSizes> {
    let (b, c, h, w) = xs.dims4()?;
    let (co, wc, k, k2) = weight.dims4()?;
    if wc != c || k != k2 || stride == 0 || h + 2 * padding < k || w + 2 * padding < k {
        candle_core::bail!(
            "{op}: input {:?}, kernel {:?}, stride {stride}, padding {padding}",
            xs.dims(),
            weight.dims()
        );
    }
    Ok(ConvSizes {
        b,
        c,
        co,
        k,
        oh: (h + 2 * padding - k) / stride + 1,
        ow: (w + 2 * padding - k) / stride + 1,
    })
}

/// `conv2d(xs, weight) + bias` for xs `[b, c, h, w]`, weight `[co, c, k,
/// k]`, bias `[co]`, on a CUDA device.
pub fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let ConvSizes {
        b,
        c,
        co,
        k,
        oh,
        ow,
    } = conv_sizes("conv2d", xs, weight, stride, padding)?;
    let col = xs.contiguous()?.apply_op1_no_bwd(&Im2Col {
        k,
        stride,
        padding,
        out: (oh, ow),
    })?;
    let kernel = weight.reshape((co, c * k * k))?.broadcast_left(b)?;
    kernel
        .matmul(&col)?
        .broadcast_add(&bias.reshape((1, co, 1))?)?
        .reshape((b, co, oh, ow))
}

// Read by the CUDA side alone, which CPU-only builds leave out.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Im2Col {
    k: usize,
    stride: usize,
    padding: usize,
    /// Output height and width.
    out: (usize, usize),
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "atelier-cuda-im2col"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(super::cpu_refusal("im2col"))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map1;
        let (b, c, _, _) = layout.shape().dims4()?;
        let shape = Shape::from((b, c * self.k * self.k, self.out.0 * self.out.1));
        let slice = self.map(&xs.slice, &xs.device, layout)?;
        Ok((super::launch::storage(slice, xs), shape))
    }
}

#[cfg(feature = "cuda")]
impl candle_core::cuda_backend::Map1 for Im2Col {
    fn f<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr + candle_core::WithDType>(
        &self,
        xs: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        dev: &candle_core::CudaDevice,
        layout: &Layout,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
        use super::launch::{int, view, IM2COL};
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{kernel_name, WrapErr};

        const OP: &str = "im2col";
        let (b, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = self.out;
        let taps = c * self.k * self.k;
        let pixels = oh * ow;
        int(h * w, OP, "an input map")?;
        int(pixels, OP, "an output map")?;
        if taps > 65_535 || b > 65_535 {
            candle_core::bail!("{OP}: {taps} taps or {b} images are more than a grid holds");
        }
        let xs = view(xs, layout, OP, "input")?;
        let args = [c, h, w, oh, ow, self.k, self.stride, self.padding]
            .map(|n| int(n, OP, "a size"))
            .into_iter()
            .collect::<Result<Vec<i32>>>()?;
        let func =
            dev.get_or_load_custom_func(&kernel_name::<T>("im2col"), IM2COL.name, IM2COL.ptx)?;
        // SAFETY: the kernel writes every element.
        let col = unsafe { dev.alloc::<T>(b * taps * pixels)? };
        let mut builder = func.builder();
        builder.arg(&xs);
        builder.arg(&col);
        for arg in &args {
            builder.arg(arg);
        }
        // Threads along the pixels of one tap; few enough blocks per row of
        // the grid that each thread takes a handful of pixels.
        let cfg = LaunchConfig {
            grid_dim: (
                pixels.div_ceil(256 * 4).max(1) as u32,
                taps as u32,
                b as u32,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `im2col` in im2col.cu; `col` holds
        // b x taps x pixels values, the grid's y and z are taps and images.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(col)
    }
}
