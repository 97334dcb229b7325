//! The engine's behaviour on a small random-weight SD 1.x model: seeds,
//! caches, progress, cancel, and every bad input named clearly.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use atelier::engine::{Cancelled, Engine, Event, Fit, Request, SchedulerKind, SourceInput};
use candle_core::{DType, Device};

fn engine_for(model: &Path) -> Engine {
    let mut engine = Engine::new(Device::Cpu, DType::F32);
    engine.load(model).unwrap();
    engine
}

fn request(case: &Path) -> Request {
    Request {
        source: SourceInput::load(&case.join("source.png")).unwrap(),
        prompt: "a red fox in the snow, oil painting".into(),
        negative: "blurry".into(),
        strength: 0.6,
        steps: 10,
        guidance: 7.5,
        seed: 7,
        scheduler: None,
        width: None,
        height: None,
        crop: None,
        fit: Fit::Crop,
        noise_file: None,
    }
}

fn run(engine: &mut Engine, req: &Request) -> anyhow::Result<atelier::engine::Generation> {
    engine.generate(req, &mut |_| {}, &AtomicBool::new(false))
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_differs() {
    let case = common::sd15_case();
    let mut engine = engine_for(&case.join("model"));
    let req = request(&case);
    let a = run(&mut engine, &req).unwrap();
    let mut fresh = engine_for(&case.join("model"));
    let b = run(&mut fresh, &req).unwrap();
    assert_eq!(a.image.as_raw(), b.image.as_raw());
    let c = run(
        &mut engine,
        &Request {
            seed: 8,
            ..req.clone()
        },
    )
    .unwrap();
    assert_ne!(a.image.as_raw(), c.image.as_raw());
    // Ancestral sampling draws fresh noise every step, from the same seed.
    let euler_a = Request {
        scheduler: Some(SchedulerKind::EulerAncestral),
        ..req
    };
    let d = run(&mut engine, &euler_a).unwrap();
    let e = run(&mut engine, &euler_a).unwrap();
    assert_eq!(d.image.as_raw(), e.image.as_raw());
    assert_ne!(d.image.as_raw(), a.image.as_raw());
}

#[test]
fn changing_only_the_prompt_or_strength_reencodes_only_what_changed() {
    let case = common::sd15_case();
    let mut engine = engine_for(&case.join("model"));
    let req = request(&case);
    run(&mut engine, &req).unwrap();
    assert_eq!((engine.text_encodes, engine.source_encodes), (2, 1));
    run(
        &mut engine,
        &Request {
            strength: 0.45,
            ..req.clone()
        },
    )
    .unwrap();
    assert_eq!(
        (engine.text_encodes, engine.source_encodes),
        (2, 1),
        "strength only"
    );
    run(
        &mut engine,
        &Request {
            prompt: "a fox at night".into(),
            ..req.clone()
        },
    )
    .unwrap();
    assert_eq!(
        (engine.text_encodes, engine.source_encodes),
        (3, 1),
        "prompt only"
    );
    run(
        &mut engine,
        &Request {
            width: Some(64),
            height: Some(64),
            ..req
        },
    )
    .unwrap();
    assert_eq!(engine.source_encodes, 2, "a new size re-encodes the source");
}

#[test]
fn progress_reports_the_plan_then_every_step_with_a_preview() {
    let case = common::sd15_case();
    let mut engine = engine_for(&case.join("model"));
    let mut events = Vec::new();
    let out = engine
        .generate(
            &request(&case),
            &mut |e| events.push(e),
            &AtomicBool::new(false),
        )
        .unwrap();
    match &events[0] {
        Event::Planned {
            steps_run,
            timesteps,
            width,
            height,
            ..
        } => {
            assert_eq!(*steps_run, 6);
            assert_eq!(timesteps, &vec![501.0, 401.0, 301.0, 201.0, 101.0, 1.0]);
            assert_eq!((*width, *height), (128, 128));
        }
        other => panic!("first event {other:?}"),
    }
    let steps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Step {
                index, of, preview, ..
            } => Some((*index, *of, preview.dimensions())),
            _ => None,
        })
        .collect();
    assert_eq!(steps, (1..=6).map(|i| (i, 6, (16, 16))).collect::<Vec<_>>());
    assert!(matches!(events.last(), Some(Event::Decoding)));
    assert_eq!(out.steps_run, 6);
    assert_eq!(out.timings.steps_s.len(), 6);
}

#[test]
fn cancel_stops_after_the_current_step() {
    let case = common::sd15_case();
    let mut engine = engine_for(&case.join("model"));
    let cancel = AtomicBool::new(false);
    let mut steps = 0;
    let result = engine.generate(
        &request(&case),
        &mut |e| {
            if let Event::Step { .. } = e {
                steps += 1;
                cancel.store(true, Ordering::Relaxed);
            }
        },
        &cancel,
    );
    assert!(result.err().unwrap().is::<Cancelled>());
    assert_eq!(steps, 1);
}

/// A guided call's one latent, shared by both prompts, gives what the
/// latent given twice gives. SD 1.x does less arithmetic for it (what comes
/// before the first cross-attention runs once); SDXL, whose added
/// conditioning differs between the prompts from the first block on, the
/// same. Samples that do not divide the conditionings are refused.
#[test]
fn a_latent_shared_by_both_prompts_matches_it_given_twice() {
    use atelier::engine::profile;
    use atelier::engine::unet::AddedConditioning;
    use candle_core::Tensor;

    let sdxl = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/sdxl-euler-empty");
    for (case, shares) in [(common::sd15_case(), true), (sdxl, false)] {
        let dev = Device::Cpu;
        let model = atelier::engine::Model::load(&case.join("model"), &dev, DType::F32).unwrap();
        let (cond, uncond) = (
            model.encode_prompt("a red fox").unwrap(),
            model.encode_prompt("blurry").unwrap(),
        );
        let context = Tensor::cat(&[&uncond.context, &cond.context], 0).unwrap();
        let added = cond.pooled.as_ref().map(|c| {
            let pooled = Tensor::cat(&[uncond.pooled.as_ref().unwrap(), c], 0).unwrap();
            AddedConditioning::for_size(pooled, 64, 64).unwrap()
        });
        let latent =
            Tensor::randn(0f32, 1., (1, model.vae_spec.latent_channels, 8, 8), &dev).unwrap();
        let twice = Tensor::cat(&[&latent, &latent], 0).unwrap();
        let call = |xs: &Tensor| {
            profile::enable(true);
            let out = profile::section("call", &dev, || {
                model.unet.forward(xs, 500.0, &context, added.as_ref())
            });
            profile::enable(false);
            let flops = profile::take()
                .iter()
                .find(|p| p.name == "call")
                .unwrap()
                .flops;
            (out.unwrap(), flops)
        };
        // Cross-attention projects a new context once: project it before
        // counting either.
        call(&twice);
        let ((shared, shared_flops), (given, given_flops)) = (call(&latent), call(&twice));
        assert_eq!(shared.dims(), given.dims(), "{}", case.display());
        let diff = common::max_abs_diff(&shared, &given);
        assert!(diff < 1e-5, "{}: {diff}", case.display());
        if shares {
            assert!(
                shared_flops < given_flops,
                "{shared_flops} vs {given_flops}"
            );
        } else {
            assert_eq!(shared_flops, given_flops);
        }

        let three = Tensor::cat(&[&latent, &latent, &latent], 0).unwrap();
        let err = model
            .unet
            .forward(&three, 500.0, &context, added.as_ref())
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 samples for 2 conditionings"), "{err}");
    }
}

fn error_of(engine: &mut Engine, req: Request) -> String {
    format!("{:#}", run(engine, &req).err().expect("should fail"))
}

#[test]
fn bad_settings_are_named() {
    let case = common::sd15_case();
    let mut engine = engine_for(&case.join("model"));
    let req = request(&case);
    assert!(error_of(
        &mut engine,
        Request {
            strength: 1.2,
            ..req.clone()
        }
    )
    .contains("strength 1.2 is outside [0, 1]"));
    assert!(error_of(
        &mut engine,
        Request {
            strength: f64::NAN,
            ..req.clone()
        }
    )
    .contains("outside [0, 1]"));
    assert!(error_of(
        &mut engine,
        Request {
            steps: 0,
            ..req.clone()
        }
    )
    .contains("steps must be at least 1"));
    // DDIM's leading spacing with steps_offset 1 would reach timestep 1000.
    let e = error_of(
        &mut engine,
        Request {
            steps: 1000,
            strength: 1.0,
            ..req.clone()
        },
    );
    assert!(
        e.contains("reaches timestep 1000") && e.contains("fewer steps"),
        "{e}"
    );
    let e = error_of(
        &mut engine,
        Request {
            strength: 0.05,
            ..req.clone()
        },
    );
    assert!(
        e.contains("runs no denoising step") && e.contains("--strength"),
        "{e}"
    );
}

#[test]
fn a_noise_file_of_the_wrong_shape_or_without_the_tensor_is_named() {
    let case = common::sd15_case();
    let mut engine = engine_for(&case.join("model"));
    let req = Request {
        width: Some(64),
        height: Some(64),
        noise_file: Some(case.join("noise.safetensors")),
        ..request(&case)
    };
    let e = error_of(&mut engine, req.clone());
    assert!(
        e.contains("init_noise") && e.contains("[1, 4, 16, 16]") && e.contains("[1, 4, 8, 8]"),
        "{e}"
    );
    let e = error_of(
        &mut engine,
        Request {
            noise_file: Some(case.join("expected.safetensors")),
            ..req
        },
    );
    assert!(e.contains("no tensor `init_noise`"), "{e}");
}

fn load_error(model: &Path) -> String {
    let mut engine = Engine::new(Device::Cpu, DType::F32);
    match engine.load(model) {
        Ok(_) => panic!("{} should not load", model.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn missing_folders_and_files_are_named() {
    let e = load_error(Path::new("/no/such/model"));
    assert!(
        e.contains("/no/such/model") && e.contains("does not exist"),
        "{e}"
    );
    let copy = common::linked_model_copy(&common::sd15_case().join("model"));
    std::fs::remove_file(copy.path().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let e = load_error(copy.path());
    assert!(e.contains("no weights in") && e.contains("unet"), "{e}");
    std::fs::remove_dir_all(copy.path().join("vae")).unwrap();
    assert!(load_error(copy.path()).contains("no vae/ folder"));
}

#[test]
fn a_corrupt_weight_file_is_named() {
    let copy = common::linked_model_copy(&common::sd15_case().join("model"));
    let file = copy.path().join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_error(copy.path());
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    std::fs::write(&file, b"<html>404</html>").unwrap();
    let e = load_error(copy.path());
    assert!(e.contains("not a valid safetensors file"), "{e}");
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named() {
    let copy = common::linked_model_copy(&common::sd15_case().join("model"));
    let config = copy.path().join("text_encoder/config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"intermediate_size\": 64", "\"intermediate_size\": 96");
    std::fs::write(&config, text).unwrap();
    let e = load_error(copy.path());
    assert!(
        e.contains("fc1") && e.contains("shape") && e.contains("text_encoder"),
        "{e}"
    );
}

#[test]
fn unsupported_architectures_name_the_field() {
    let copy = common::linked_model_copy(&common::sd15_case().join("model"));
    let config = copy.path().join("unet/config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "\"addition_embed_type\": null",
        "\"addition_embed_type\": \"image\"",
    );
    std::fs::write(&config, text).unwrap();
    let e = load_error(copy.path());
    assert!(
        e.contains("addition_embed_type") && e.contains("image") && e.contains("unet/config.json"),
        "{e}"
    );
}

#[test]
fn the_fp16_variant_loads_when_it_is_the_only_file() {
    let copy = common::linked_model_copy(&common::sd15_case().join("model"));
    let unet = copy.path().join("unet");
    std::fs::rename(
        unet.join("diffusion_pytorch_model.safetensors"),
        unet.join("diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    let mut engine = Engine::new(Device::Cpu, DType::F32);
    engine.load(copy.path()).unwrap();
}

#[test]
fn sharded_and_half_precision_weights_load_and_still_match() {
    let case = common::sd15_case();
    let copy = common::linked_model_copy(&case.join("model"));
    // Split the UNet into two f16 shards with an index, as large repos ship it.
    let unet = copy.path().join("unet");
    let tensors = candle_core::safetensors::load(
        unet.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    std::fs::remove_file(unet.join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        let shard: std::collections::HashMap<_, _> = chunk
            .iter()
            .map(|n| (n.clone(), tensors[n].to_dtype(DType::F16).unwrap()))
            .collect();
        candle_core::safetensors::save(&shard, unet.join(&file)).unwrap();
        for n in chunk {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    std::fs::write(
        unet.join("diffusion_pytorch_model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let mut reference = engine_for(&case.join("model"));
    let mut sharded = engine_for(copy.path());
    let req = request(&case);
    let a = run(&mut reference, &req).unwrap();
    let b = run(&mut sharded, &req).unwrap();
    let diff = common::max_abs_diff(&a.pixels, &b.pixels);
    // f16 rounding of the weights only.
    assert!(diff < 0.05, "max diff {diff}");
}
