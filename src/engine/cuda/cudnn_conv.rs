//! Convolutions through cuDNN, keeping what candle 0.11's cuDNN path redoes
//! at every call: the tensor, filter and convolution descriptors, the
//! algorithm (cuDNN's heuristic pick, as PyTorch makes it without benchmark
//! mode) and the workspace. Redone per call they cost 3.5-4 ms per
//! convolution on the H100 whatever its size (session 2's cuDNN build),
//! which made that build 10x slower than PyTorch. Here they are made once
//! per shape and thread (a cuDNN handle is neither `Send` nor `Sync`), and
//! one workspace per device grows to the largest that any shape asked for.
//!
//! Half precision accumulates in f32 on tensor cores, as PyTorch's
//! convolutions do. f32 stays f32 (no TF32, so parity holds to 1e-6)
//! unless `ATELIER_CUDA_TF32=on`, which is what PyTorch allows by default
//! for convolutions.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// `conv2d(xs, weight) + bias` for xs `[b, c, h, w]`, weight `[co, c, k,
/// k]`, bias `[co]`, on a CUDA device, through cuDNN.
pub fn cudnn_conv2d(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let sizes = super::conv::conv_sizes("cuDNN conv2d", xs, weight, stride, padding)?;
    let co = sizes.co;
    let out = xs.contiguous()?.apply_op2_no_bwd(
        &weight.contiguous()?,
        &CudnnConv {
            stride,
            padding,
            out: (sizes.oh, sizes.ow),
            tf32: std::env::var("ATELIER_CUDA_TF32").as_deref() == Ok("on"),
        },
    )?;
    out.broadcast_add(&bias.reshape((1, co, 1, 1))?)
}

// Read by the cuDNN side alone, which other builds leave out.
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
struct CudnnConv {
    stride: usize,
    padding: usize,
    /// Output height and width.
    out: (usize, usize),
    /// Whether f32 may run as TF32 on tensor cores.
    tf32: bool,
}

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        "atelier-cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(super::cpu_refusal("cuDNN convolution"))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xs_layout: &Layout,
        weight: &candle_core::CudaStorage,
        weight_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::CudaStorageSlice as S;
        let (b, c, h, w) = xs_layout.shape().dims4()?;
        let (co, _, k, _) = weight_layout.shape().dims4()?;
        let key = plans::Key {
            dtype: xs.dtype(),
            input: [b, c, h, w],
            output: [b, co, self.out.0, self.out.1],
            kernel: k,
            stride: self.stride,
            padding: self.padding,
            tf32: self.tf32,
        };
        let dev = &xs.device;
        let slice = match (&xs.slice, &weight.slice) {
            (S::F32(x), S::F32(wt)) => {
                S::F32(plans::run(dev, &key, x, xs_layout, wt, weight_layout)?)
            }
            (S::F16(x), S::F16(wt)) => {
                S::F16(plans::run(dev, &key, x, xs_layout, wt, weight_layout)?)
            }
            (S::BF16(x), S::BF16(wt)) => {
                S::BF16(plans::run(dev, &key, x, xs_layout, wt, weight_layout)?)
            }
            _ => candle_core::bail!(
                "cuDNN conv2d: input {:?} and kernel {:?} must both be f32, f16 or bf16",
                xs.dtype(),
                weight.dtype()
            ),
        };
        Ok((super::launch::storage(slice, xs), Shape::from(&key.output)))
    }
}

#[cfg(feature = "cudnn")]
mod plans {
    use std::any::Any;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;

    use candle_core::cuda_backend::cudarc::cudnn::{
        sys, ConvDescriptor, ConvForward, Cudnn, CudnnDataType, FilterDescriptor, TensorDescriptor,
    };
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
    use candle_core::cuda_backend::DeviceId;
    use candle_core::{CudaDevice, DType, Layout, Result, WithDType};

    use crate::engine::cuda::launch::{int, view};

    const OP: &str = "cuDNN conv2d";

    /// The most workspace one convolution's algorithm may ask for.
    const MAX_WORKSPACE: usize = 512 << 20;

    /// What a plan depends on.
    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Key {
        pub dtype: DType,
        pub input: [usize; 4],
        pub output: [usize; 4],
        pub kernel: usize,
        pub stride: usize,
        pub padding: usize,
        pub tf32: bool,
    }

    /// The descriptors and algorithm of one shape, for data of type `T`
    /// (accumulated in f32).
    struct Plan<T> {
        x: TensorDescriptor<T>,
        w: FilterDescriptor<T>,
        y: TensorDescriptor<T>,
        conv: ConvDescriptor<f32>,
        algo: sys::cudnnConvolutionFwdAlgo_t,
        workspace_bytes: usize,
    }

    /// One device's handle, plans (each a `Plan<T>` of its key's dtype) and
    /// workspace, on this thread.
    struct DeviceState {
        cudnn: Arc<Cudnn>,
        plans: HashMap<Key, Box<dyn Any>>,
        workspace: Option<CudaSlice<u8>>,
    }

    thread_local! {
        static STATES: RefCell<HashMap<DeviceId, DeviceState>> = RefCell::new(HashMap::new());
    }

    /// The convolution of `x` by `w` as `key` describes, into a new buffer.
    pub fn run<T>(
        dev: &CudaDevice,
        key: &Key,
        x: &CudaSlice<T>,
        x_layout: &Layout,
        w: &CudaSlice<T>,
        w_layout: &Layout,
    ) -> Result<CudaSlice<T>>
    where
        T: CudnnDataType + DeviceRepr + WithDType + 'static,
    {
        let x = view(x, x_layout, OP, "input")?;
        let w = view(w, w_layout, OP, "kernel")?;
        STATES.with(|states| {
            let mut states = states.borrow_mut();
            let state = match states.entry(dev.id()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(DeviceState {
                    cudnn: Cudnn::new(dev.cuda_stream())?,
                    plans: HashMap::new(),
                    workspace: None,
                }),
            };
            if !state.plans.contains_key(key) {
                let plan = plan::<T>(&state.cudnn, key)?;
                state.plans.insert(*key, Box::new(plan));
            }
            let plan = state.plans[key]
                .downcast_ref::<Plan<T>>()
                .expect("a plan's key holds its dtype");
            let have = state.workspace.as_ref().map_or(0, |ws| ws.len());
            if plan.workspace_bytes > have {
                // The old one is freed in stream order, after the
                // convolutions queued before that use it.
                state.workspace = None;
                // SAFETY: cuDNN's scratch space; it reads only what it
                // wrote there during the same call.
                state.workspace = Some(unsafe { dev.alloc::<u8>(plan.workspace_bytes)? });
            }
            let [b, co, oh, ow] = key.output;
            // SAFETY: cuDNN writes every element of the output.
            let mut y = unsafe { dev.alloc::<T>(b * co * oh * ow)? };
            let op = ConvForward {
                conv: &plan.conv,
                x: &plan.x,
                w: &plan.w,
                y: &plan.y,
            };
            let workspace = if plan.workspace_bytes > 0 {
                state.workspace.as_mut()
            } else {
                None
            };
            // SAFETY: x, w and y are contiguous NCHW buffers of the types
            // and shapes the plan's descriptors were made for.
            unsafe {
                op.launch(
                    plan.algo,
                    workspace,
                    (T::from_f64(1.0), T::from_f64(0.0)),
                    &x,
                    &w,
                    &mut y,
                )
            }?;
            Ok(y)
        })
    }

    fn plan<T: CudnnDataType>(cudnn: &Arc<Cudnn>, key: &Key) -> Result<Plan<T>> {
        let dims = |d: [usize; 4]| -> Result<[i32; 4]> {
            Ok([
                int(d[0], OP, "a batch")?,
                int(d[1], OP, "a channel count")?,
                int(d[2], OP, "a height")?,
                int(d[3], OP, "a width")?,
            ])
        };
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let [_, c, _, _] = key.input;
        let [_, co, _, _] = key.output;
        let k = int(key.kernel, OP, "a kernel")?;
        let (stride, pad) = (
            int(key.stride, OP, "a stride")?,
            int(key.padding, OP, "a padding")?,
        );
        let x = cudnn.create_4d_tensor::<T>(nchw, dims(key.input)?)?;
        let y = cudnn.create_4d_tensor::<T>(nchw, dims(key.output)?)?;
        let w = cudnn.create_4d_filter::<T>(
            nchw,
            [int(co, OP, "channels")?, int(c, OP, "channels")?, k, k],
        )?;
        let mut conv = cudnn.create_conv2d::<f32>(
            [pad, pad],
            [stride, stride],
            [1, 1],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )?;
        // DEFAULT allows tensor cores: f16/bf16 products, and TF32 for f32.
        let math = if key.dtype == DType::F32 && !key.tf32 {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        };
        conv.set_math_type(math)?;
        let op = ConvForward {
            conv: &conv,
            x: &x,
            w: &w,
            y: &y,
        };
        // cuDNN's first choice, unless its workspace is larger than a
        // convolution should hold on a smaller GPU (FFT algorithms on the
        // VAE's largest maps can ask for gigabytes): then the implicit GEMMs,
        // whose workspace is small or none.
        use sys::cudnnConvolutionFwdAlgo_t as Algo;
        let mut algo = op.pick_algorithm()?;
        let mut workspace_bytes = op.get_workspace_size(algo)?;
        for fallback in [
            Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        ] {
            if workspace_bytes <= MAX_WORKSPACE {
                break;
            }
            algo = fallback;
            workspace_bytes = op.get_workspace_size(algo)?;
        }
        Ok(Plan {
            x,
            w,
            y,
            conv,
            algo,
            workspace_bytes,
        })
    }
}
