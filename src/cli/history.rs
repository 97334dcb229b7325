//! `atelier history`: the runs as a table or JSON, filtered and sorted.

use std::path::Path;

use anyhow::{bail, Result};
use clap::Args;

use super::Global;
use crate::project::{Access, History, Project, RunRecord};

#[derive(Args, Debug, Clone, Default)]
pub struct HistoryArgs {
    /// Only runs from this source: a hash prefix, or an image file.
    #[arg(long)]
    pub source: Option<String>,
    /// Only starred runs.
    #[arg(long)]
    pub starred: bool,
    /// Only runs whose prompt, negative prompt, tags or note contain TEXT (any case).
    #[arg(long)]
    pub grep: Option<String>,
    /// Only runs made since: a date (2026-11-27), a time (RFC 3339), or an age (30m, 2h, 3d).
    #[arg(long)]
    pub since: Option<String>,
    /// Only runs with this status (queued, running, done, failed, cancelled, imported).
    #[arg(long)]
    pub status: Option<String>,
    /// Sort by id, time, strength, steps, guidance or seed.
    #[arg(long, default_value = "id")]
    pub sort: String,
    /// Newest (or largest) first.
    #[arg(long)]
    pub reverse: bool,
    /// Show at most N runs (after sorting).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print a JSON array of run objects instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The earliest creation time `--since` allows, as RFC 3339.
pub fn since_cutoff(since: &str, now: chrono::DateTime<chrono::Utc>) -> Result<String> {
    let s = since.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(format!("{d}T00:00:00Z"));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| {
        anyhow::anyhow!(
            "--since {since:?}: use a date (2026-11-27), a time (RFC 3339) or an age (30m, 2h, 3d)"
        )
    })?;
    let age = match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        "w" => chrono::Duration::weeks(n),
        _ => bail!("--since {since:?}: the age unit must be s, m, h, d or w"),
    };
    Ok((now - age).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The runs that pass the filters, sorted.
pub fn select<'a>(
    project: &Project,
    history: &'a History,
    args: &HistoryArgs,
) -> Result<Vec<&'a RunRecord>> {
    let source_prefix = match &args.source {
        Some(s) if Path::new(s).is_file() => Some(crate::hash::hex_digest(&std::fs::read(s)?)),
        Some(s) => Some(s.to_ascii_lowercase()),
        None => None,
    };
    let _ = project;
    let cutoff = args
        .since
        .as_deref()
        .map(|s| since_cutoff(s, chrono::Utc::now()))
        .transpose()?;
    let needle = args.grep.as_deref().map(str::to_lowercase);
    let mut runs: Vec<&RunRecord> = history
        .runs
        .iter()
        .filter(|r| {
            source_prefix
                .as_ref()
                .is_none_or(|p| r.source.starts_with(p.as_str()))
        })
        .filter(|r| !args.starred || r.starred)
        .filter(|r| args.status.as_ref().is_none_or(|s| r.status.name() == s))
        .filter(|r| {
            cutoff
                .as_ref()
                .is_none_or(|c| r.created.as_str() >= c.as_str())
        })
        .filter(|r| {
            needle.as_ref().is_none_or(|n| {
                r.recipe.prompt.to_lowercase().contains(n)
                    || r.recipe.negative.to_lowercase().contains(n)
                    || r.note.to_lowercase().contains(n)
                    || r.tags.iter().any(|t| t.to_lowercase().contains(n))
            })
        })
        .collect();
    let key = args.sort.as_str();
    match key {
        "id" => runs.sort_by_key(|r| r.id),
        "time" => runs.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id))),
        "strength" => runs.sort_by(|a, b| a.recipe.strength.total_cmp(&b.recipe.strength)),
        "guidance" => runs.sort_by(|a, b| a.recipe.guidance.total_cmp(&b.recipe.guidance)),
        "steps" => runs.sort_by_key(|r| r.recipe.steps),
        "seed" => runs.sort_by_key(|r| r.recipe.seed),
        other => bail!("--sort {other:?}: use id, time, strength, steps, guidance or seed"),
    }
    if args.reverse {
        runs.reverse();
    }
    if let Some(n) = args.limit {
        runs.truncate(n);
    }
    Ok(runs)
}

/// One run as a flat JSON object for scripts.
pub fn run_json(r: &RunRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": r.id,
        "created": r.created,
        "status": r.status.name(),
        "error": r.error,
        "parent": r.parent,
        "source": r.source,
        "source_run": r.source_run,
        "steps_run": r.steps_run,
        "starred": r.starred,
        "tags": r.tags,
        "note": r.note,
        "device": r.device,
        "model_fingerprint": r.model.fingerprint,
    });
    if let (Some(obj), Ok(serde_json::Value::Object(recipe))) =
        (v.as_object_mut(), serde_json::to_value(&r.recipe))
    {
        obj.extend(recipe);
    }
    v
}

fn cut(text: &str, n: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        one_line.chars().take(n - 1).collect::<String>() + "…"
    }
}

pub fn table(runs: &[&RunRecord]) -> String {
    let mut out = format!(
        "{:>6}  {:<16}  {:<8}  {:>5}  {:>5}  {:>5}  {:>10}  {:<9}  {:<1}  {}\n",
        "ID", "TIME (UTC)", "SOURCE", "STR", "STEPS", "CFG", "SEED", "STATUS", "*", "PROMPT"
    );
    for r in runs {
        let time = r.created.get(..16).unwrap_or(&r.created).replace('T', " ");
        out.push_str(&format!(
            "{:>6}  {:<16}  {:<8}  {:>5}  {:>5}  {:>5}  {:>10}  {:<9}  {:<1}  {}\n",
            r.label(),
            time,
            r.source.get(..8).unwrap_or(&r.source),
            r.recipe.strength,
            r.recipe.steps,
            r.recipe.guidance,
            r.recipe.seed,
            r.status.name(),
            if r.starred { "*" } else { "" },
            cut(&r.recipe.prompt, 50)
        ));
    }
    out
}

/// Tells on stderr which records were skipped, and why.
pub fn warn_unreadable(history: &History) {
    for bad in &history.unreadable {
        eprintln!(
            "warning: skipped the unreadable record {}: {}",
            bad.path.display(),
            bad.reason
        );
    }
}

pub fn run(args: HistoryArgs, global: &Global) -> Result<()> {
    let root = Project::locate(global.project.as_deref())?;
    let project = Project::open(&root, Access::Read)?;
    let history = project.history()?;
    warn_unreadable(&history);
    let runs = select(&project, &history, &args)?;
    if args.json {
        let array: Vec<serde_json::Value> = runs.iter().map(|r| run_json(r)).collect();
        println!("{}", serde_json::to_string_pretty(&array)?);
    } else {
        print!("{}", table(&runs));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_times_and_ages() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            since_cutoff("2026-11-20", now).unwrap(),
            "2026-11-20T00:00:00Z"
        );
        assert_eq!(since_cutoff("2h", now).unwrap(), "2026-11-27T10:00:00Z");
        assert_eq!(since_cutoff("3d", now).unwrap(), "2026-11-24T12:00:00Z");
        assert!(since_cutoff("yesterday", now).is_err());
        assert!(since_cutoff("5y", now).is_err());
    }
}
