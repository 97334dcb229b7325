//! `atelier sweep ID --strength 0.3:0.8:0.1 [--seed 1..4]`: a grid of runs
//! over one or two settings (A1111's X/Y plot), queued as ordinary runs,
//! plus a contact sheet with the values labelled.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::gen::open_project;
use super::rerun::apply_set;
use super::runner::{PlannedRun, RunnerArgs};
use super::Global;
use crate::project::{parse_run_id, Access};

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// The run whose recipe is swept (42 or #42).
    pub id: String,
    /// Values: A:B:STEP (inclusive), or a list A,B,C.
    #[arg(long)]
    pub strength: Option<String>,
    /// Values, as for --strength: 5:9:2 or 5,7.5,9.
    #[arg(long)]
    pub guidance: Option<String>,
    /// Values: N..M (inclusive), or a list.
    #[arg(long)]
    pub seed: Option<String>,
    /// Values: N..M, A:B:STEP or a list.
    #[arg(long)]
    pub steps: Option<String>,
    /// A list of schedulers: euler,ddim,...
    #[arg(long)]
    pub scheduler: Option<String>,
    /// The contact sheet [default: the project's sheets/ folder].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunnerArgs,
}

/// The values of one axis, as strings `--set` understands.
pub fn parse_values(key: &str, spec: &str) -> Result<Vec<String>> {
    let spec = spec.trim();
    let values: Vec<String> = if let Some((a, b)) = spec.split_once("..") {
        let (a, b): (i64, i64) = (
            a.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--{key} {spec:?}: N..M needs whole numbers"))?,
            b.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--{key} {spec:?}: N..M needs whole numbers"))?,
        );
        if b < a || b - a > 99 {
            bail!("--{key} {spec:?}: N..M must go up, by at most 100 values");
        }
        (a..=b).map(|v| v.to_string()).collect()
    } else if spec.matches(':').count() == 2 {
        let parts: Vec<f64> = spec
            .split(':')
            .map(|p| p.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--{key} {spec:?}: A:B:STEP needs numbers"))?;
        let (a, b, step) = (parts[0], parts[1], parts[2]);
        if step <= 0.0 || b < a {
            bail!("--{key} {spec:?}: A:B:STEP needs A <= B and STEP > 0");
        }
        let n = ((b - a) / step + 1e-9).floor() as usize + 1;
        if n > 100 {
            bail!("--{key} {spec:?} makes {n} values; at most 100");
        }
        // Round away float noise (0.30000000000000004).
        (0..n)
            .map(|i| format!("{}", ((a + i as f64 * step) * 1e6).round() / 1e6))
            .collect()
    } else {
        spec.split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    };
    if values.is_empty() {
        bail!("--{key} {spec:?} has no values");
    }
    Ok(values)
}

/// The most runs one sweep makes.
const MAX_CELLS: usize = 400;

pub fn run(args: SweepArgs, global: &Global) -> Result<()> {
    let axes: Vec<(&str, Vec<String>)> = [
        ("strength", &args.strength),
        ("guidance", &args.guidance),
        ("seed", &args.seed),
        ("steps", &args.steps),
        ("scheduler", &args.scheduler),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| parse_values(k, v).map(|vals| (k, vals))))
    .collect::<Result<_>>()?;
    if axes.is_empty() || axes.len() > 2 {
        bail!("a sweep takes one or two settings (--strength, --guidance, --seed, --steps, --scheduler)");
    }
    let project = open_project(global, false, Access::Write)?.expect("required");
    let id = parse_run_id(&args.id)?;
    let base = project.record(id)?;
    let source = crate::jobs::source_of(&project, &base)?;
    let (x_key, xs) = (&axes[0].0, &axes[0].1);
    let rows: Vec<Option<&String>> = match axes.get(1) {
        Some((_, ys)) => ys.iter().map(Some).collect(),
        None => vec![None],
    };
    // All cells are recorded before the first runs, and the sheet holds
    // them all: 400 cells at 192 px is a sheet of about 4000 px a side.
    if xs.len() * rows.len() > MAX_CELLS {
        bail!(
            "the sweep makes {} x {} = {} runs; at most {MAX_CELLS} at once",
            xs.len(),
            rows.len(),
            xs.len() * rows.len()
        );
    }
    let mut plans = Vec::new();
    for y in &rows {
        for x in xs {
            let mut recipe = base.recipe.clone();
            apply_set(&mut recipe, &format!("{x_key}={x}"))?;
            if let (Some(y), Some((y_key, _))) = (y, axes.get(1)) {
                apply_set(&mut recipe, &format!("{y_key}={y}"))?;
            }
            crate::engine::pipeline::validate_settings(
                recipe.strength,
                recipe.steps,
                recipe.guidance,
            )?;
            plans.push(PlannedRun {
                recipe,
                source: source.clone(),
                parent: Some(id),
                noise_file: None,
                out: None,
            });
        }
    }
    let mut runner = args.run.runner(Some(&project))?;
    // A cell that fails (a scheduler this model cannot run) leaves its
    // place on the sheet marked; the others still come.
    let ended = runner.run_each(Some(&project), plans)?;
    let id_of = |e: &std::result::Result<super::runner::Outcome, super::runner::Failed>| {
        match e {
            Ok(o) => o.id,
            Err(f) => f.id,
        }
        .unwrap_or(0)
    };
    let cells: Vec<crate::sheet::Cell> = ended
        .iter()
        .map(|e| crate::sheet::Cell {
            image: e
                .as_ref()
                .ok()
                .and_then(|o| image::open(&o.path).ok())
                .map(|i| i.to_rgb8()),
            labels: vec![match e {
                Ok(_) => format!("#{}", id_of(e)),
                Err(_) => format!("#{} failed", id_of(e)),
            }],
            highlight: vec![],
        })
        .collect();
    let column_headers: Vec<String> = xs.iter().map(|x| format!("{x_key} {x}")).collect();
    let row_headers: Vec<String> = match axes.get(1) {
        Some((k, ys)) => ys.iter().map(|y| format!("{k} {y}")).collect(),
        None => vec![],
    };
    let title = format!("sweep of #{id}: {}", base.recipe.prompt.replace('\n', " "));
    let sheet = crate::sheet::grid(&title, &column_headers, &row_headers, &cells, xs.len(), 192);
    let first = ended.first().map(id_of).unwrap_or(0);
    let last = ended.last().map(id_of).unwrap_or(0);
    let out = args.out.unwrap_or_else(|| {
        project
            .sheets_dir()
            .join(format!("sweep-{first}-{last}.png"))
    });
    std::fs::create_dir_all(out.parent().unwrap_or(std::path::Path::new(".")))?;
    crate::png_meta::write_png(
        &out,
        &sheet,
        &[(
            "parameters",
            &format!("atelier sweep of #{id}: runs #{first} to #{last}"),
        )],
    )?;
    let mut failed = Vec::new();
    for e in &ended {
        match e {
            Ok(o) => println!("#{}  {}", id_of(e), o.path.display()),
            Err(_) => failed.push(format!("#{}", id_of(e))),
        }
    }
    println!("sheet: {}", out.display());
    if !failed.is_empty() {
        bail!(
            "{} of {} runs failed ({}); `atelier show ID` has each one's error",
            failed.len(),
            ended.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_specs() {
        assert_eq!(
            parse_values("strength", "0.3:0.6:0.1").unwrap(),
            vec!["0.3", "0.4", "0.5", "0.6"]
        );
        assert_eq!(parse_values("seed", "3..5").unwrap(), vec!["3", "4", "5"]);
        assert_eq!(
            parse_values("scheduler", "euler, ddim").unwrap(),
            vec!["euler", "ddim"]
        );
        assert!(parse_values("seed", "5..3").is_err());
        assert!(parse_values("strength", "0:1:0").is_err());
        assert!(parse_values("strength", "0:100:0.1").is_err());
    }
}
