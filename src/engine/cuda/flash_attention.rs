//! Fused attention on tensor cores for f16 and bf16: no score matrix in
//! memory, heads read and written in place. Two kernels of one interface
//! ([`FlashKernel`]): WMMA (`flash_attention.cu`), measured, and `mma.sync`
//! with everything in registers (`flash_attention_mma.cu`), written for the
//! heads of 64 where the first loses but not yet run on a GPU.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// The head widths the kernel is built for, padded to a multiple of 16.
const WIDTHS: [usize; 6] = [48, 64, 80, 96, 128, 160];

/// Score matrices above this size always go to the fused kernel: candle's
/// products would hold them whole (SD 1.5 at 1024 px: 8.6 GB per layer).
const FUSE_SCORES_ABOVE: usize = 2 << 30;

/// Whether attention over q `[batch, n, heads·d]` and k `[batch, m, ..]`
/// should run fused rather than as candle's products (`upcast`: candle's
/// scores would be f32). `ATELIER_CUDA_ATTENTION=on` or `off` decides
/// outright; by default, where it measured faster on an H200 or where
/// candle's scores would be too large:
/// - SD 1.5 at 512 px (heads of 40, f16 scores): 36.9 -> 32.7 ms per step;
/// - SD 2.1 at 768 px (heads of 64, f32 scores): 130 -> 103 ms;
/// - SDXL at 1024 px (heads of 64, f16 scores): 171 -> 195 ms, slower.
///
/// The kernel's extra work grows with the head width, and what it saves
/// with the bytes per score, so it is used up to 20 head values per score
/// byte: heads up to 40 wide with f16/bf16 scores, 80 with f32 ones.
pub fn prefer_fused_attention(q: &Tensor, k: &Tensor, heads: usize, upcast: bool) -> Result<bool> {
    match std::env::var("ATELIER_CUDA_ATTENTION").as_deref() {
        Ok("off") => return Ok(false),
        Ok("on") => return Ok(true),
        _ => {}
    }
    let (batch, n, dim) = q.dims3()?;
    let m = k.dim(1)?;
    let score_bytes = if upcast && q.dtype() == DType::F16 {
        4
    } else {
        2
    };
    let scores = batch * heads * n * m * score_bytes;
    Ok(scores > FUSE_SCORES_ABOVE || dim <= 20 * score_bytes * heads)
}

/// The fused attention kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashKernel {
    /// WMMA fragments, with S, P and the output's rescaling through shared
    /// memory (`flash_attention.cu`): measured on an H200, the default.
    Wmma,
    /// `mma.sync` fragments that keep S, P and the output in registers
    /// (`flash_attention_mma.cu`), 32 query rows per warp up to heads of
    /// 80, 16 above; `ATELIER_CUDA_FLASH=mma`. Not yet run on a GPU.
    Mma,
    /// The same with 16 query rows per warp at every width (more blocks
    /// per SM, each K and V fragment read for one product);
    /// `ATELIER_CUDA_FLASH=mma1`.
    MmaOneTile,
}

impl FlashKernel {
    /// `ATELIER_CUDA_FLASH=mma|mma1|wmma`, WMMA by default.
    pub fn from_env() -> Self {
        match std::env::var("ATELIER_CUDA_FLASH").as_deref() {
            Ok("mma") => Self::Mma,
            Ok("mma1") => Self::MmaOneTile,
            _ => Self::Wmma,
        }
    }
}

/// `softmax(q kᵀ · scale) v` per head for q `[batch, n, heads·d]` and k, v
/// `[batch, m, heads·d]` on a CUDA device, in q's layout, by the kernel
/// `ATELIER_CUDA_FLASH` names ([`flash_attention_with`]).
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Option<Tensor>> {
    flash_attention_with(q, k, v, heads, scale, FlashKernel::from_env())
}

/// [`flash_attention`] by `kernel`; None where the kernel does not take the
/// shapes (f32, a head width not a multiple of 8 or wider than 160, a
/// kernel absent from the build): the caller runs candle's products then.
pub fn flash_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    kernel: FlashKernel,
) -> Result<Option<Tensor>> {
    let dim = q.dim(2)?;
    if !matches!(q.dtype(), DType::F16 | DType::BF16)
        || heads == 0
        || !dim.is_multiple_of(heads)
        || !(dim / heads).is_multiple_of(8)
    {
        return Ok(None);
    }
    let head_dim = dim / heads;
    let Some(width) = WIDTHS
        .into_iter()
        .find(|w| *w >= head_dim && *w < head_dim + 16)
    else {
        return Ok(None);
    };
    let op = FlashAttention {
        heads,
        scale,
        width,
        kernel,
    };
    if !op.available(q) {
        return Ok(None);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    q.apply_op3_no_bwd(&k, &v, &op).map(Some)
}

// Read by the CUDA side alone, which CPU-only builds leave out.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct FlashAttention {
    heads: usize,
    scale: f32,
    /// The padded head width and the kernel: which function runs.
    width: usize,
    kernel: FlashKernel,
}

impl FlashAttention {
    /// Whether this build has the kernel for the dtype and width (bf16 ones
    /// need a build for sm_80 or newer), made ready to run.
    #[cfg(feature = "cuda")]
    fn available(&self, q: &Tensor) -> bool {
        match q.device() {
            candle_core::Device::Cuda(dev) => self.ready(dev, q.dtype()),
            _ => false,
        }
    }

    #[cfg(not(feature = "cuda"))]
    fn available(&self, _: &Tensor) -> bool {
        false
    }

    #[cfg(feature = "cuda")]
    fn kernel_name(&self, dtype: DType) -> String {
        let kind = match self.kernel {
            FlashKernel::Wmma => "",
            FlashKernel::MmaOneTile if self.width <= 80 => "mma1_",
            FlashKernel::Mma | FlashKernel::MmaOneTile => "mma_",
        };
        format!("flash_attention_{kind}d{}_{}", self.width, dtype.as_str())
    }

    #[cfg(feature = "cuda")]
    fn module(&self) -> &'static super::launch::Module {
        match self.kernel {
            FlashKernel::Wmma => &super::launch::FLASH_ATTENTION,
            FlashKernel::Mma | FlashKernel::MmaOneTile => &super::launch::FLASH_ATTENTION_MMA,
        }
    }

    /// Query rows per block: 16 per warp of 4, and for `Mma` 32 up to heads
    /// of 80 (`row_tiles` in flash_attention_mma.cu).
    #[cfg(feature = "cuda")]
    fn block_rows(&self) -> usize {
        match self.kernel {
            FlashKernel::Mma if self.width <= 80 => 128,
            _ => 64,
        }
    }

    /// Shared memory per block, 64 keys and 4 warps (the layouts in the .cu
    /// files). WMMA: Q, K, V tiles in 2-byte values, and per warp S and O
    /// in f32. mma.sync: Q, K and Vᵀ tiles with rows padded by 8 values.
    /// Above 48 KiB (WMMA from 64 wide, mma.sync from 128) a
    /// kernel must be allowed it (`ready`).
    #[cfg(feature = "cuda")]
    fn shared_bytes(&self) -> usize {
        let w = self.width;
        match self.kernel {
            FlashKernel::Wmma => (64 + 2 * 64) * w * 2 + 4 * 16 * 64 * 4 + 4 * 16 * w * 4,
            FlashKernel::Mma | FlashKernel::MmaOneTile => {
                ((self.block_rows() + 64) * (w + 8) + w * (64 + 8)) * 2
            }
        }
    }

    /// Loads the kernel and allows it its shared memory, once per device and
    /// kernel (a driver call per launch would stall the launch queue);
    /// whether that worked.
    #[cfg(feature = "cuda")]
    fn ready(&self, dev: &candle_core::CudaDevice, dtype: DType) -> bool {
        use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
        use std::collections::HashMap;
        use std::sync::Mutex;

        type Key = (candle_core::cuda_backend::DeviceId, String);
        static READY: Mutex<Option<HashMap<Key, bool>>> = Mutex::new(None);
        let name = self.kernel_name(dtype);
        let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
        let ready = ready.get_or_insert_with(HashMap::new);
        *ready.entry((dev.id(), name.clone())).or_insert_with(|| {
            let module = self.module();
            dev.get_or_load_custom_func(&name, module.name, module.ptx)
                .is_ok_and(|func| {
                    func.set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        self.shared_bytes() as i32,
                    )
                    .is_ok()
                })
        })
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "atelier-cuda-flash-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(super::cpu_refusal("attention"))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        q_layout: &Layout,
        k: &candle_core::CudaStorage,
        k_layout: &Layout,
        v: &candle_core::CudaStorage,
        v_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map3;
        let slice = self.map(
            &q.slice, q_layout, &k.slice, k_layout, &v.slice, v_layout, &q.device,
        )?;
        Ok((super::launch::storage(slice, q), q_layout.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
impl candle_core::cuda_backend::Map3 for FlashAttention {
    fn f<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr + candle_core::WithDType>(
        &self,
        q: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        q_layout: &Layout,
        k: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        k_layout: &Layout,
        v: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        v_layout: &Layout,
        dev: &candle_core::CudaDevice,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
        use super::launch::{int, view};
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;

        const OP: &str = "attention";
        let (batch, n, dim) = q_layout.shape().dims3()?;
        let (k_batch, m, k_dim) = k_layout.shape().dims3()?;
        if (k_batch, k_dim) != (batch, dim) || v_layout.shape() != k_layout.shape() || m == 0 {
            candle_core::bail!(
                "{OP}: q {:?}, k {:?} and v {:?} do not match",
                q_layout.shape(),
                k_layout.shape(),
                v_layout.shape()
            );
        }
        // 16-byte loads: every row and head starts on a multiple of 8 values.
        for (layout, what) in [(q_layout, "q"), (k_layout, "k"), (v_layout, "v")] {
            if !layout.start_offset().is_multiple_of(8) {
                candle_core::bail!("{OP}: {what} starts at an offset not a multiple of 8");
            }
        }
        let q = view(q, q_layout, OP, "q")?;
        let k = view(k, k_layout, OP, "k")?;
        let v = view(v, v_layout, OP, "v")?;
        let head_dim = dim / self.heads;
        let args = (
            int(n, OP, "a query length")?,
            int(m, OP, "a key length")?,
            int(self.heads, OP, "heads")?,
            int(head_dim, OP, "a head")?,
            self.scale * std::f32::consts::LOG2_E,
        );
        if !self.ready(dev, T::DTYPE) {
            candle_core::bail!("{OP}: the kernel for {:?} is not in this build", T::DTYPE);
        }
        let module = self.module();
        let func =
            dev.get_or_load_custom_func(&self.kernel_name(T::DTYPE), module.name, module.ptx)?;
        let shared = self.shared_bytes();
        // SAFETY: the kernel writes every element of every head.
        let out = unsafe { dev.alloc::<T>(q.len())? };
        let mut builder = func.builder();
        builder.arg(&q);
        builder.arg(&k);
        builder.arg(&v);
        builder.arg(&out);
        builder.arg(&args.0);
        builder.arg(&args.1);
        builder.arg(&args.2);
        builder.arg(&args.3);
        builder.arg(&args.4);
        let cfg = LaunchConfig {
            grid_dim: (
                n.div_ceil(self.block_rows()) as u32,
                (batch * self.heads) as u32,
                1,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        // SAFETY: the arguments match `flash_attention` in
        // flash_attention.cu and `flash_attention_mma` in
        // flash_attention_mma.cu, over the shapes checked above.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// q and k of the given shapes, for the choice alone (it reads dims).
    fn choice(n: usize, m: usize, dim: usize, heads: usize, upcast: bool) -> Result<bool> {
        let q = Tensor::zeros((2, n, dim), DType::F16, &Device::Cpu)?;
        let k = Tensor::zeros((2, m, dim), DType::F16, &Device::Cpu)?;
        prefer_fused_attention(&q, &k, heads, upcast)
    }

    #[test]
    fn fused_where_it_measured_faster_or_scores_are_large() -> Result<()> {
        // SD 1.5 at 512 px: 8 heads of 40 at 4096 tokens; SD 2.1's f32
        // scores at 768 px; SDXL's heads of 64 at 1024 px stay on products.
        assert!(choice(4096, 4096, 320, 8, false)?);
        assert!(choice(9216, 9216, 320, 5, true)?);
        assert!(!choice(4096, 4096, 640, 10, false)?);
        assert!(!choice(1024, 1024, 640, 8, false)?);
        // SDXL's heads of 64 at 2048 px: 10.7 GB of f16 scores per layer.
        assert!(choice(16384, 16384, 640, 10, false)?);
        Ok(())
    }
}
