//! The mma.sync fused attention kernel (src/engine/cuda/flash_attention_mma.cu)
//! run on the CPU under tools/mma_emulation (each CUDA thread a host thread,
//! mma.sync rebuilt from the PTX fragment layouts) against an f64
//! reference: its index arithmetic, masking and online softmax are checked
//! on machines without a GPU, CI among them. Needs g++ with C++20,
//! `_Float16` and AddressSanitizer (GCC 12 or newer); says so and passes
//! without g++.

use std::process::Command;

#[test]
fn mma_attention_kernel_matches_reference_under_emulation() {
    if Command::new("g++").arg("--version").output().is_err() {
        eprintln!("no g++: the mma.sync kernel's emulation did not run");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/mma_emulation/run.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("bash runs the emulation script");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "emulated kernel missed:\n{report}");
    eprintln!("{report}");
}
