//! Each scheduler's timesteps and sigmas against diffusers' own values
//! (tests/fixtures/scheduler_reference.json, made by the script beside it).

use atelier::engine::scheduler::{build, img2img_start, SchedulerConfig, SchedulerKind};

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * y.abs().max(1.0))
}

#[test]
fn timesteps_and_sigmas_match_diffusers() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/scheduler_reference.json"
    ))
    .unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() > 100);
    let mut failures = Vec::new();
    for case in cases {
        let kind: SchedulerKind = case["scheduler"].as_str().unwrap().parse().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let config = SchedulerConfig::from_json(case["config"].clone(), "reference");
        let s = build(&config, kind, steps).unwrap();
        let want: Vec<f64> = serde_json::from_value(case["timesteps"].clone()).unwrap();
        if !close(s.timesteps(), &want, 1e-4) {
            failures.push(format!(
                "{kind} {steps} {}: timesteps {:?} != {want:?}",
                case["config"],
                s.timesteps()
            ));
        }
        if let Some(want) = case.get("sigmas") {
            let want: Vec<f64> = serde_json::from_value(want.clone()).unwrap();
            let got = s.sigmas().expect("sigma scheduler");
            if !close(got, &want, 1e-5) {
                failures.push(format!(
                    "{kind} {steps} {}: sigmas {got:?} != {want:?}",
                    case["config"]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn img2img_runs_the_last_int_steps_times_strength() {
    // diffusers: init = min(int(steps * strength), steps); start = steps - init.
    assert_eq!(img2img_start(10, 10, 0.6), Some(4));
    assert_eq!(img2img_start(10, 10, 1.0), Some(0));
    assert_eq!(img2img_start(50, 50, 0.3), Some(35));
    assert_eq!(img2img_start(10, 10, 0.05), None, "no step runs");
    assert_eq!(img2img_start(10, 10, 0.0), None);
    // PNDM's schedule has one extra position; the start index is the same.
    assert_eq!(img2img_start(11, 10, 0.7), Some(3));
}

#[test]
fn scheduler_names_parse_and_unknown_ones_list_the_choices() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.name().parse::<SchedulerKind>().unwrap(), kind);
    }
    assert_eq!(
        "DPM++ 2M Karras".parse::<SchedulerKind>().unwrap(),
        SchedulerKind::DpmPp2mKarras
    );
    assert_eq!(
        "Euler a".parse::<SchedulerKind>().unwrap(),
        SchedulerKind::EulerAncestral
    );
    let err = "lms".parse::<SchedulerKind>().unwrap_err().to_string();
    assert!(err.contains("ddim") && err.contains("euler_a"), "{err}");
}

#[test]
fn unsupported_scheduler_settings_are_named() {
    let config = SchedulerConfig::from_json(
        serde_json::json!({"_class_name": "LMSDiscreteScheduler"}),
        "scheduler_config.json",
    );
    let err = config.native_kind().unwrap_err().to_string();
    assert!(
        err.contains("LMSDiscreteScheduler") && err.contains("--scheduler"),
        "{err}"
    );
    let config = SchedulerConfig::from_json(
        serde_json::json!({"_class_name": "DDIMScheduler", "thresholding": true}),
        "scheduler_config.json",
    );
    let err = build(&config, SchedulerKind::Ddim, 10)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("thresholding"), "{err}");
}
