//! `atelier gen` as a user runs it: parity through the binary, variations,
//! the parameters text in the PNG, and errors on bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn atelier(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(args)
        .output()
        .unwrap()
}

fn gen_case(case: &Path, out: &Path, extra: &[&str]) -> Output {
    common::gen_case_command(case, &case.join("model"), out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn gen_matches_diffusers_on_every_parity_case() {
    let tmp = tempfile::tempdir().unwrap();
    for case in common::parity_cases() {
        let out = tmp.path().join("out.safetensors");
        let run = gen_case(&case, &out, &[]);
        assert!(
            run.status.success(),
            "{}: {}",
            case.display(),
            String::from_utf8_lossy(&run.stderr)
        );
        let got = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
        let want = candle_core::safetensors::load(
            case.join("expected.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let diff = common::max_abs_diff(&got["image"], &want["image"]);
        assert!(diff <= 1e-3, "{}: max abs diff {diff}", case.display());

        // The PNG is the same image, rounded as diffusers rounds.
        let png = tmp.path().join("out.png");
        assert!(gen_case(&case, &png, &[]).status.success());
        let got = image::open(&png).unwrap().to_rgb8();
        let want = image::open(case.join("expected.png")).unwrap().to_rgb8();
        let worst = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(
            worst <= 1,
            "{}: PNG differs by {worst} levels",
            case.display()
        );
    }
}

#[test]
fn count_makes_numbered_variations_each_reproducible_alone() {
    let case = common::sd15_case();
    let tmp = tempfile::tempdir().unwrap();
    let c = common::read_case(&case);
    let base = |seed: &str, count: &str, out: &Path| {
        atelier(&[
            "gen",
            "--model",
            case.join("model").to_str().unwrap(),
            "--source",
            case.join("source.png").to_str().unwrap(),
            "--prompt",
            &c.prompt,
            "--steps",
            "4",
            "--strength",
            "0.5",
            "--seed",
            seed,
            "--count",
            count,
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ])
    };
    let run = base("5", "2", &tmp.path().join("v.png"));
    common::ok(&run);
    assert!(tmp.path().join("v-1.png").is_file() && tmp.path().join("v-2.png").is_file());
    assert!(base("6", "1", &tmp.path().join("alone.png"))
        .status
        .success());
    let pixels = |name: &str| {
        image::open(tmp.path().join(name))
            .unwrap()
            .to_rgb8()
            .into_raw()
    };
    assert_eq!(
        pixels("v-2.png"),
        pixels("alone.png"),
        "image 2 of seed 5 is seed 6"
    );
    assert_ne!(pixels("v-1.png"), pixels("v-2.png"));

    // The PNG carries A1111's parameters and atelier's record.
    let texts = atelier::png_meta::read_png_texts(&tmp.path().join("v-2.png")).unwrap();
    let params = &texts.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(params.starts_with(&c.prompt), "{params}");
    assert!(
        params.contains("Steps: 4, Sampler: DDIM, CFG scale: 7.5, Seed: 6, Size: 128x128"),
        "{params}"
    );
    assert!(params.contains("Denoising strength: 0.5"), "{params}");
    let record: serde_json::Value =
        serde_json::from_str(&texts.iter().find(|(k, _)| k == "atelier").unwrap().1).unwrap();
    assert_eq!(record["recipe"]["seed"], 6);
    assert_eq!(record["steps_run"], 2);
}

#[test]
fn bad_input_fails_with_a_message_and_writes_nothing() {
    let case = common::sd15_case();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let model = case.join("model");
    let source = case.join("source.png");
    let cases: &[(&[&str], &str)] = &[
        (&["--strength", "1.5"], "strength 1.5 is outside [0, 1]"),
        (&["--steps", "0"], "steps must be at least 1"),
        (&["--scheduler", "lms"], "unknown scheduler"),
        (&["--fit", "zoom"], "unknown fit"),
        (&["--crop", "1,2"], "X,Y,W,H"),
        (&["--width", "4096", "--height", "4096"], "over the limit"),
        (&["--count", "100000"], "more than 100 variations"),
        (&["--device", "tpu"], "unknown device"),
    ];
    for (extra, message) in cases {
        let mut args = vec![
            "gen",
            "--model",
            model.to_str().unwrap(),
            "--source",
            source.to_str().unwrap(),
            "--prompt",
            "x",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let run = atelier(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{extra:?} should fail");
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
        assert!(!out.exists(), "{extra:?} wrote an output");
    }
    let not_image = tmp.path().join("notes.txt");
    std::fs::write(&not_image, "hello").unwrap();
    let run = atelier(&[
        "gen",
        "--model",
        model.to_str().unwrap(),
        "--source",
        not_image.to_str().unwrap(),
        "--prompt",
        "x",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("not an image"));
}

/// `atelier bench` of `model` at 64 px on the CPU, once, profiled, with
/// `settings` added: its JSON line.
fn bench_json(model: &Path, settings: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--size",
        "64",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--json",
        "--profile",
    ];
    args.extend_from_slice(settings);
    let out = atelier(&args);
    common::ok(&out);
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
}

/// One part of a bench line's UNet profile, by name.
fn unet_part<'a>(r: &'a serde_json::Value, part: &str) -> &'a serde_json::Value {
    let parts = r["unet_profile"].as_array().unwrap();
    let found = parts.iter().find(|p| p["part"] == part);
    found.unwrap_or_else(|| panic!("no {part} in {r}"))
}

#[test]
fn bench_measures_a_model_folder_and_prints_json() {
    let model = common::sd15_case().join("model");
    let r = bench_json(&model, &["--steps", "4", "--strength", "0.5"]);
    assert_eq!(r["unet_calls"], 2, "int(4 x 0.5) UNet calls");
    for field in [
        "unet_step_ms",
        "vae_encode_ms",
        "vae_decode_ms",
        "img2img_s",
        "peak_memory_mib",
    ] {
        assert!(r[field].as_f64().unwrap() > 0.0, "{field}: {r}");
    }
    // A new prompt is encoded before the first step; a new seed encodes nothing.
    let rerun = &r["rerun_first_step_ms"];
    assert!(
        rerun["prompt_ms"].as_f64().unwrap() > rerun["seed_ms"].as_f64().unwrap(),
        "{r}"
    );
    // The profile times each kind of work and counts its arithmetic: one
    // of its 32 -> 32 convolutions at 8x8 for both prompts is 2 x 2 x 64 x
    // 32 x 32 x 9 floating-point operations, and it has several.
    let conv = unet_part(&r, "conv 3x3");
    assert!(conv["ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(conv["gflop"].as_f64().unwrap() >= 2.359296e-3, "{r}");
}

/// On SDXL an empty negative prompt conditions on zeros, and its half of
/// every cross-attention is not computed: the UNet call's profile counts
/// half the cross-attention arithmetic of a call with a negative prompt.
#[test]
fn bench_with_an_empty_sdxl_negative_counts_half_the_cross_attention() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/sdxl-euler-empty/model");
    let cross_attention_gflop = |negative: &str| {
        let r = bench_json(&model, &["--steps", "2", "--negative", negative]);
        unet_part(&r, "cross-attention")["gflop"].as_f64().unwrap()
    };
    let (given, empty) = (cross_attention_gflop("blurry"), cross_attention_gflop(""));
    assert!(given > 0.0);
    assert!(
        (empty * 2.0 - given).abs() < given * 1e-3,
        "{empty} vs {given}"
    );
}

#[test]
fn bench_writes_real_architecture_configs() {
    let dir = tempfile::tempdir().unwrap();
    let out = atelier(&[
        "bench",
        "--arch",
        "sdxl",
        "--write-configs",
        dir.path().to_str().unwrap(),
    ]);
    common::ok(&out);
    let unet: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("unet/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        unet["transformer_layers_per_block"],
        serde_json::json!([1, 2, 10])
    );
    assert!(dir.path().join("text_encoder_2/config.json").is_file());
}

#[test]
fn models_lists_model_folders_with_their_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let sd2 = common::shared_dir().join("parity/cases/sd2v-euler/model");
    std::os::unix::fs::symlink(&sd2, dir.path().join("tiny-sd2")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(["models", "--json", "--dir", dir.path().to_str().unwrap()])
        .env("HF_HUB_CACHE", dir.path().join("no-cache"))
        .env("ATELIER_CONFIG_DIR", dir.path())
        .output()
        .unwrap();
    common::ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let models: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(models.len(), 1, "{text}");
    assert_eq!(models[0]["arch"], "SD 2.x (v)");
    assert_eq!(models[0]["kind"], "folder");
    assert!(models[0]["missing"].is_null(), "{text}");
    assert!(models[0]["size_bytes"].as_u64().unwrap() > 1_000_000);
}
