//! Softmax over the last dimension as one CUDA kernel (`softmax.cu`): one
//! block per row, in f32 for every storage type.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `softmax(xs, -1)` for `xs` on a CUDA device.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1_no_bwd(&Softmax)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "atelier-cuda-softmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(super::cpu_refusal("softmax"))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map1;
        let slice = self.map(&xs.slice, &xs.device, layout)?;
        Ok((super::launch::storage(slice, xs), layout.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
impl candle_core::cuda_backend::Map1 for Softmax {
    fn f<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr + candle_core::WithDType>(
        &self,
        xs: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        dev: &candle_core::CudaDevice,
        layout: &Layout,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
        use super::launch::{int, view, SOFTMAX};
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{kernel_name, WrapErr};

        const OP: &str = "softmax";
        let xs = view(xs, layout, OP, "input")?;
        let cols = layout.shape().dims().last().copied().unwrap_or(1);
        if cols == 0 {
            candle_core::bail!("{OP}: rows of no values in {:?}", layout.shape());
        }
        let rows = xs.len() / cols;
        let cols_arg = int(cols, OP, "a row")?;
        let func =
            dev.get_or_load_custom_func(&kernel_name::<T>("softmax"), SOFTMAX.name, SOFTMAX.ptx)?;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>(xs.len())? };
        let mut builder = func.builder();
        builder.arg(&xs);
        builder.arg(&out);
        builder.arg(&cols_arg);
        // One load per thread per unrolled step (8), in whole warps.
        let threads = cols.div_ceil(8).next_multiple_of(32).clamp(32, 1024);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `softmax` in softmax.cu, over `rows`
        // rows of `cols`.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(out)
    }
}
