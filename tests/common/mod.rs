//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;

/// The shared folder beside the repository (parity cases, fixtures);
/// `ATELIER_SHARED` overrides it.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("ATELIER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

/// Every parity case folder: the shared ones and the ones in tests/parity.
pub fn parity_cases() -> Vec<PathBuf> {
    let mut cases = Vec::new();
    for root in [
        shared_dir().join("parity/cases"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/parity"),
    ] {
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                if e.path().join("case.json").is_file() {
                    cases.push(e.path());
                }
            }
        }
    }
    cases.sort();
    cases
}

#[derive(serde::Deserialize, Debug)]
pub struct Case {
    pub prompt: String,
    pub negative_prompt: String,
    pub strength: f64,
    pub steps: usize,
    pub guidance: f64,
    pub width: u32,
    pub height: u32,
    pub denoising_steps_run: usize,
}

pub fn read_case(dir: &std::path::Path) -> Case {
    serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap()
}

/// The img2img request a parity case describes (its noise, its size).
pub fn request_for_case(dir: &std::path::Path) -> atelier::engine::Request {
    let case = read_case(dir);
    atelier::engine::Request {
        source: atelier::engine::SourceInput::load(&dir.join("source.png")).unwrap(),
        prompt: case.prompt,
        negative: case.negative_prompt,
        strength: case.strength,
        steps: case.steps,
        guidance: case.guidance,
        seed: 0,
        scheduler: None,
        width: Some(case.width),
        height: Some(case.height),
        crop: None,
        fit: atelier::engine::Fit::Crop,
        noise_file: Some(dir.join("noise.safetensors")),
    }
}

/// `atelier gen` with a parity case's prompts, settings and noise, on the
/// CPU, writing `out`; `model` is what `--model` gets.
pub fn gen_case_command(
    case: &std::path::Path,
    model: &std::path::Path,
    out: &std::path::Path,
) -> std::process::Command {
    let c = read_case(case);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_atelier"));
    cmd.arg("gen")
        .arg("--model")
        .arg(model)
        .arg("--source")
        .arg(case.join("source.png"))
        .args(["--prompt", &c.prompt, "--negative", &c.negative_prompt])
        .args(["--strength", &c.strength.to_string()])
        .args(["--steps", &c.steps.to_string()])
        .args(["--guidance", &c.guidance.to_string()])
        .arg("--noise")
        .arg(case.join("noise.safetensors"))
        .args(["--device", "cpu", "--out"])
        .arg(out)
        .arg("--quiet");
    cmd
}

/// diffusers' output for a parity case: f32 [3, h, w].
pub fn expected_image(dir: &std::path::Path) -> candle_core::Tensor {
    let mut tensors =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    tensors
        .remove("image")
        .expect("expected.safetensors holds `image`")
}

/// A copy of a model folder whose weight files are symlinks, so a test can
/// edit configs (or replace one weight file) without copying megabytes.
pub fn linked_model_copy(model: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for part in std::fs::read_dir(model).unwrap().flatten() {
        let dest = dir.path().join(part.file_name());
        if part.path().is_dir() {
            std::fs::create_dir(&dest).unwrap();
            for f in std::fs::read_dir(part.path()).unwrap().flatten() {
                let target = dest.join(f.file_name());
                if f.path().extension().is_some_and(|e| e == "safetensors") {
                    std::os::unix::fs::symlink(f.path().canonicalize().unwrap(), target).unwrap();
                } else {
                    std::fs::copy(f.path(), target).unwrap();
                }
            }
        } else {
            std::fs::copy(part.path(), dest).unwrap();
        }
    }
    dir
}

/// The first shared parity case (SD 1.x, DDIM).
pub fn sd15_case() -> PathBuf {
    shared_dir().join("parity/cases/sd15-ddim")
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of the same shape")
}

/// Asserts that a command succeeded (showing its output if not) and
/// returns its standard output.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Whether this machine lets a test mount in a namespace of its own
/// (`unshare -rm`): a small or read-only disk without root.
pub fn can_unshare() -> bool {
    std::process::Command::new("unshare")
        .args(["-rm", "true"])
        .status()
        .is_ok_and(|s| s.success())
}
