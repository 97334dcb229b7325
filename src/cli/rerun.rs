//! `atelier rerun ID [--set key=value ...]`: the same recipe with the named
//! changes, recorded as a child of ID. Without changes it reproduces ID.

use anyhow::{bail, Result};
use clap::Args;

use super::gen::open_project;
use super::runner::{PlannedRun, RunnerArgs};
use super::Global;
use crate::project::{parse_run_id, Access};
use crate::recipe::Recipe;

#[derive(Args, Debug, Clone)]
pub struct RerunArgs {
    /// The run to start from (42 or #42).
    pub id: String,
    /// A change: key=value, or prompt+=TEXT / negative+=TEXT to append.
    /// Keys: prompt, negative, strength, steps, guidance, seed (N, random,
    /// +N, -N), scheduler, width, height, fit, crop (X,Y,W,H or none), model.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub run: RunnerArgs,
}

pub const SET_KEYS: &str =
    "prompt, negative, strength, steps, guidance, seed, scheduler, width, height, fit, crop, model";

/// Applies one `--set` change to a recipe.
pub fn apply_set(recipe: &mut Recipe, change: &str) -> Result<()> {
    let (key, value, append) = if let Some((k, v)) = change.split_once("+=") {
        (k.trim(), v, true)
    } else if let Some((k, v)) = change.split_once('=') {
        (k.trim(), v, false)
    } else {
        bail!("--set {change:?} must be KEY=VALUE (or prompt+=TEXT); keys: {SET_KEYS}");
    };
    let number = |what: &str| -> Result<f64> {
        value
            .trim()
            .parse::<f64>()
            .map_err(|_| anyhow::anyhow!("--set {key}: {value:?} is not a number ({what})"))
    };
    let whole = || -> Result<u64> {
        value
            .trim()
            .parse::<u64>()
            .map_err(|_| anyhow::anyhow!("--set {key}: {value:?} is not a whole number"))
    };
    if append && !matches!(key, "prompt" | "negative") {
        bail!("--set {key}+=...: only prompt and negative can be appended to");
    }
    match key {
        "prompt" if append => recipe.prompt.push_str(value),
        "prompt" => recipe.prompt = value.to_string(),
        "negative" if append => recipe.negative.push_str(value),
        "negative" => recipe.negative = value.to_string(),
        "strength" => recipe.strength = number("0 to 1")?,
        "guidance" => recipe.guidance = number("e.g. 7.5")?,
        "steps" => recipe.steps = whole()? as usize,
        "seed" => {
            let v = value.trim();
            recipe.seed = if v == "random" {
                rand::random::<u32>() as u64
            } else if let Some(d) = v.strip_prefix('+') {
                recipe.seed.wrapping_add(
                    d.parse()
                        .map_err(|_| anyhow::anyhow!("--set seed={v}: use N, random, +N or -N"))?,
                )
            } else if let Some(d) = v.strip_prefix('-') {
                recipe.seed.wrapping_sub(
                    d.parse()
                        .map_err(|_| anyhow::anyhow!("--set seed={v}: use N, random, +N or -N"))?,
                )
            } else {
                whole()?
            };
        }
        "scheduler" => {
            recipe.scheduler = if value.trim() == "default" {
                String::new()
            } else {
                value
                    .parse::<crate::engine::SchedulerKind>()?
                    .name()
                    .to_string()
            }
        }
        "width" => recipe.width = whole()? as u32,
        "height" => recipe.height = whole()? as u32,
        "fit" => recipe.fit = value.parse()?,
        "crop" => {
            recipe.crop = if value.trim() == "none" {
                None
            } else {
                Some(value.parse()?)
            }
        }
        "model" => recipe.model = value.to_string(),
        other => bail!("--set: unknown key {other:?}; keys: {SET_KEYS}"),
    }
    Ok(())
}

pub fn run(args: RerunArgs, global: &Global) -> Result<()> {
    let project = open_project(global, false, Access::Write)?.expect("required");
    let id = parse_run_id(&args.id)?;
    let record = project.record(id)?;
    let mut recipe = record.recipe.clone();
    for change in &args.set {
        apply_set(&mut recipe, change)?;
    }
    crate::engine::pipeline::validate_settings(recipe.strength, recipe.steps, recipe.guidance)?;
    let plan = PlannedRun {
        recipe,
        source: crate::jobs::source_of(&project, &record)?,
        parent: Some(id),
        noise_file: None,
        out: None,
    };
    let mut runner = args.run.runner(Some(&project))?;
    for o in runner.run_all(Some(&project), vec![plan])? {
        println!(
            "#{}  {}  seed {}  {} steps  (child of #{id})",
            o.id.unwrap_or(0),
            o.path.display(),
            o.recipe.seed,
            o.steps_run
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Fit;

    fn recipe() -> Recipe {
        Recipe {
            prompt: "a fox".into(),
            negative: String::new(),
            strength: 0.6,
            steps: 20,
            guidance: 7.5,
            seed: 10,
            scheduler: "euler".into(),
            width: 512,
            height: 512,
            crop: None,
            fit: Fit::Crop,
            model: "sd-turbo".into(),
        }
    }

    #[test]
    fn sets_apply_and_append() {
        let mut r = recipe();
        for s in [
            "strength=0.45",
            "prompt+=, at dusk",
            "seed=+1",
            "scheduler=DPM++ 2M",
            "crop=0,0,64,64",
            "steps=8",
        ] {
            apply_set(&mut r, s).unwrap();
        }
        assert_eq!(r.strength, 0.45);
        assert_eq!(r.prompt, "a fox, at dusk");
        assert_eq!(r.seed, 11);
        assert_eq!(r.scheduler, "dpmpp_2m");
        assert_eq!(r.crop.unwrap().w, 64);
        assert_eq!(r.steps, 8);
        apply_set(&mut r, "seed=random").unwrap();
    }

    #[test]
    fn malformed_sets_are_explained() {
        let mut r = recipe();
        let err = |s: &str, r: &mut Recipe| apply_set(r, s).unwrap_err().to_string();
        assert!(err("strength", &mut r).contains("KEY=VALUE"));
        assert!(err("strength=lots", &mut r).contains("not a number"));
        assert!(err("colour=red", &mut r).contains("unknown key"));
        assert!(err("steps+=2", &mut r).contains("only prompt and negative"));
        assert!(err("seed=abc", &mut r).contains("whole number"));
    }
}
