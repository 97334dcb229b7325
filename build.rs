//! With the `cuda` feature: atelier's own CUDA kernels (src/engine/cuda/*.cu)
//! compiled to PTX with nvcc, for `src/engine/cuda` to embed. nvcc and
//! `CUDA_COMPUTE_CAP` (without a GPU) as for candle's own kernels; see the
//! README's "GPU builds".

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let ptx = cudaforge::KernelBuilder::new()
            .source_files([
                "src/engine/cuda/flash_attention.cu",
                "src/engine/cuda/flash_attention_mma.cu",
                "src/engine/cuda/group_norm.cu",
                "src/engine/cuda/im2col.cu",
                "src/engine/cuda/softmax.cu",
                "src/engine/cuda/geglu.cu",
            ])
            .watch(["src/engine/cuda/common.cuh"])
            .arg("-O3")
            .arg("-std=c++17")
            .build_ptx()
            .unwrap_or_else(|e| panic!("nvcc could not compile atelier's CUDA kernels: {e}"));
        ptx.write(out.join("ptx.rs"))
            .unwrap_or_else(|e| panic!("could not write the PTX index: {e}"));
    }
}
