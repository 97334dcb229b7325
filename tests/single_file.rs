//! Single-file checkpoints (LDM key names, as A1111 and civitai ship them):
//! parity models rewritten by tools/to_single_file.py must load and give
//! diffusers' output; files that are not SD checkpoints are refused with
//! what was found.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use atelier::engine::single_file::{detect, CheckpointArch};
use atelier::engine::Engine;
use candle_core::{DType, Device, Tensor};

/// Python with numpy and safetensors: ATELIER_PYTHON, else the environment
/// .ci/run makes, else python3.
fn python() -> String {
    if let Ok(python) = std::env::var("ATELIER_PYTHON") {
        return python;
    }
    let ci = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-python/bin/python");
    if ci.is_file() {
        return ci.display().to_string();
    }
    "python3".into()
}

/// Runs the converter; the tool is part of what is tested.
fn convert(model: &Path, out: &Path) {
    let status = std::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/to_single_file.py"))
        .arg(model)
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("cannot run python (set ATELIER_PYTHON to one with numpy and safetensors)");
    assert!(
        status.success(),
        "tools/to_single_file.py failed: it needs numpy and safetensors \
         (`pip install numpy safetensors`; .ci/run installs them)"
    );
}

fn cases() -> Vec<(PathBuf, CheckpointArch)> {
    let shared = common::shared_dir().join("parity/cases");
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity");
    vec![
        (shared.join("sd15-ddim"), CheckpointArch::Sd1),
        (shared.join("sd2v-euler"), CheckpointArch::Sd2),
        (ours.join("sdxl-euler-empty"), CheckpointArch::Sdxl),
    ]
}

#[test]
fn converted_checkpoints_load_and_match_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    for (case, arch) in cases() {
        let ckpt = tmp.path().join(format!(
            "{}.safetensors",
            case.file_name().unwrap().to_string_lossy()
        ));
        convert(&case.join("model"), &ckpt);
        assert_eq!(detect(&ckpt).unwrap(), arch, "{}", case.display());

        let mut engine = Engine::new(Device::Cpu, DType::F32);
        engine.load_single_file(&ckpt, &case.join("model")).unwrap();
        let out = engine
            .generate(
                &common::request_for_case(&case),
                &mut |_| {},
                &AtomicBool::new(false),
            )
            .unwrap();
        let diff = common::max_abs_diff(&out.pixels, &common::expected_image(&case));
        println!("{}: single file, max abs diff {diff:e}", case.display());
        assert!(diff < 1e-4, "{}: {diff}", case.display());
    }
}

fn write_safetensors(path: &Path, names: &[&str]) {
    let tensors: Vec<(String, Tensor)> = names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&tensors.into_iter().collect(), path).unwrap();
}

#[test]
fn files_that_are_not_sd_checkpoints_are_refused_with_what_was_found() {
    let tmp = tempfile::tempdir().unwrap();
    let lora = tmp.path().join("lora.safetensors");
    write_safetensors(
        &lora,
        &["lora_unet_down_blocks_0.alpha", "lora_te_text_model.alpha"],
    );
    let err = detect(&lora).unwrap_err().to_string();
    assert!(
        err.contains("lora_te_text_model") && err.contains("LoRA"),
        "{err}"
    );

    let inpaint = tmp.path().join("inpaint.safetensors");
    let mut tensors = std::collections::HashMap::new();
    tensors.insert(
        "cond_stage_model.transformer.text_model.final_layer_norm.weight".to_string(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "model.diffusion_model.input_blocks.0.0.weight".to_string(),
        Tensor::zeros((8, 9, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &inpaint).unwrap();
    let err = detect(&inpaint).unwrap_err().to_string();
    assert!(err.contains("9 input channels"), "{err}");

    let pickle = tmp.path().join("model.ckpt");
    std::fs::write(
        &pickle,
        b"PK\x03\x04 not safetensors at all, a zip of pickles",
    )
    .unwrap();
    let err = detect(&pickle).unwrap_err().to_string();
    assert!(err.contains("not a safetensors checkpoint"), "{err}");
}

#[test]
fn a_checkpoint_that_does_not_fit_its_base_names_the_tensor() {
    // An SD 1.x checkpoint against an SD 2.x base: widths differ.
    let tmp = tempfile::tempdir().unwrap();
    let (sd1, _) = &cases()[0];
    let (sd2, _) = &cases()[1];
    let ckpt = tmp.path().join("sd1.safetensors");
    convert(&sd1.join("model"), &ckpt);
    let mut engine = Engine::new(Device::Cpu, DType::F32);
    let err = format!(
        "{:#}",
        engine
            .load_single_file(&ckpt, &sd2.join("model"))
            .err()
            .unwrap()
    );
    assert!(
        err.contains("does not fit") && err.contains("weight"),
        "{err}"
    );
}

#[test]
fn gen_takes_a_checkpoint_with_its_base_configs_from_the_hub_cache() {
    // The base (sd15) in a cache holding only configs and tokenizers, offline.
    let tmp = tempfile::tempdir().unwrap();
    let (case, _) = &cases()[0];
    let model = case.join("model");
    let snapshot = tmp
        .path()
        .join("hub/models--stable-diffusion-v1-5--stable-diffusion-v1-5/snapshots/abc");
    for rel in atelier::models::cache::relative_files(&model) {
        if rel.ends_with(".safetensors") {
            continue;
        }
        let dest = snapshot.join(&rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(model.join(&rel), dest).unwrap();
    }
    let refs = tmp
        .path()
        .join("hub/models--stable-diffusion-v1-5--stable-diffusion-v1-5/refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join("main"), "abc").unwrap();
    let ckpt = tmp.path().join("my-finetune.safetensors");
    convert(&model, &ckpt);

    let out = tmp.path().join("out.safetensors");
    let run = common::gen_case_command(case, &ckpt, &out)
        .env("HF_HUB_CACHE", tmp.path().join("hub"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    common::ok(&run);
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let diff = common::max_abs_diff(&got["image"], &common::expected_image(case));
    assert!(diff < 1e-3, "{diff}");
}
