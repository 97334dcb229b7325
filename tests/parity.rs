//! Every parity case (diffusers' output on small random-weight models) run
//! through the library must land within 1e-3 of the reference.

mod common;

use std::sync::atomic::AtomicBool;

use atelier::engine::{Engine, Fit, Request, SourceInput};
use candle_core::{DType, Device};

#[test]
fn library_matches_diffusers_on_every_parity_case() {
    let cases = common::parity_cases();
    assert!(
        cases.len() >= 2,
        "no parity cases found under {:?}",
        common::shared_dir()
    );
    let mut failures = Vec::new();
    for dir in &cases {
        let case = common::read_case(dir);
        let mut engine = Engine::new(Device::Cpu, DType::F32);
        engine.load(&dir.join("model")).unwrap();
        let req = Request {
            source: SourceInput::load(&dir.join("source.png")).unwrap(),
            prompt: case.prompt.clone(),
            negative: case.negative_prompt.clone(),
            strength: case.strength,
            steps: case.steps,
            guidance: case.guidance,
            seed: 0,
            scheduler: None,
            width: Some(case.width),
            height: Some(case.height),
            crop: None,
            fit: Fit::Crop,
            noise_file: Some(dir.join("noise.safetensors")),
        };
        let out = engine
            .generate(&req, &mut |_| {}, &AtomicBool::new(false))
            .unwrap();
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let expected = &expected["image"];
        let diff = common::max_abs_diff(&out.pixels, expected);
        println!(
            "{}: max abs diff {diff:e}, steps run {}",
            dir.display(),
            out.steps_run
        );
        assert_eq!(
            out.steps_run,
            case.denoising_steps_run + usize::from(dir.to_string_lossy().contains("pndm")),
            "{}: steps run",
            dir.display()
        );
        if diff.is_nan() || diff > 1e-3 {
            failures.push(format!("{}: max abs diff {diff}", dir.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}
