//! Opening a project of 10,000 runs and listing its history: the library
//! call (open + read every record + filter + render the table) and the
//! whole `atelier history` command, with the memory the records take.
//!
//!     cargo bench --bench history
//!
//! ATELIER_BENCH_RUNS changes the number of runs (10000).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use atelier::cli::history::{select, table, HistoryArgs};
use atelier::engine::{Fit, Timings};
use atelier::project::{Access, ModelRef, Project, RunRecord, Status};
use atelier::recipe::Recipe;

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn record(id: u64) -> RunRecord {
    RunRecord {
        id,
        created: format!("2026-11-{:02}T{:02}:{:02}:00Z", 1 + id % 27, id % 24, id % 60),
        status: if id.is_multiple_of(50) { Status::Failed } else { Status::Done },
        error: None,
        parent: (id > 1 && id.is_multiple_of(3)).then(|| id - 1),
        source: format!("{:064x}", id % 40),
        source_run: None,
        steps_run: Some(18),
        device: "cuda:0".into(),
        starred: id.is_multiple_of(17),
        tags: if id.is_multiple_of(5) { vec!["keeper".into()] } else { vec![] },
        note: String::new(),
        recipe: Recipe {
            prompt: format!("a photograph of a product on a marble table, soft studio light, variation {id}"),
            negative: "blurry, low quality, watermark".into(),
            strength: 0.3 + (id % 7) as f64 * 0.1,
            steps: 30,
            guidance: 7.5,
            seed: id * 7919,
            scheduler: "dpmpp_2m".into(),
            width: 768,
            height: 512,
            crop: None,
            fit: Fit::Crop,
            model: "stabilityai/stable-diffusion-2-1".into(),
        },
        model: ModelRef {
            name: "stabilityai/stable-diffusion-2-1".into(),
            path: "/home/me/.cache/huggingface/hub/models--stabilityai--stable-diffusion-2-1/snapshots/5cae40e6a2745ae2b01ad92ae5043f95f23644d6".into(),
            fingerprint: "4464f9004da870e7".into(),
        },
        timings: Some(Timings {
            load_s: 3.2,
            encode_text_s: 0.02,
            encode_source_s: 0.05,
            steps_s: vec![0.031; 18],
            decode_s: 0.08,
        }),
    }
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::var("ATELIER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let project = Project::init(dir.path())?;
    for id in 1..=n {
        // Written directly (no fsync per file) so the setup stays quick.
        let run_dir = project.run_dir(id);
        std::fs::create_dir_all(&run_dir)?;
        std::fs::write(run_dir.join("run.toml"), record(id).to_toml()?)?;
    }
    drop(project);

    let rss_before = rss_kib("VmRSS:");
    let mut lib_times = Vec::new();
    let mut rows = 0;
    let mut held = None;
    for _ in 0..5 {
        let t = Instant::now();
        let project = Project::open(dir.path(), Access::Read)?;
        let history = project.history()?;
        let runs = select(
            &project,
            &history,
            &HistoryArgs {
                sort: "id".into(),
                ..Default::default()
            },
        )?;
        rows = table(&runs).lines().count();
        lib_times.push(t.elapsed().as_secs_f64());
        drop(runs);
        held = Some(history);
    }
    let rss_after = rss_kib("VmRSS:");
    assert_eq!(rows as u64, n + 1);
    assert_eq!(held.as_ref().map(|h| h.runs.len() as u64), Some(n));

    let exe = env!("CARGO_BIN_EXE_atelier");
    let mut cmd_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = Command::new(exe)
            .args(["history", "--project"])
            .arg(dir.path())
            .output()?;
        assert!(out.status.success());
        cmd_times.push(t.elapsed().as_secs_f64());
    }
    let peak = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v /usr/bin/time >/dev/null && /usr/bin/time -f %M {exe} history --project {} 2>&1 >/dev/null | tail -1", dir.path().display()))
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok());

    println!("runs: {n} (records in {})", Path::new(dir.path()).display());
    println!(
        "open + read all records + filter + table (library, warm cache), median of 5: {:.3} s",
        median(lib_times)
    );
    println!(
        "`atelier history` (whole process, warm cache), median of 5: {:.3} s",
        median(cmd_times)
    );
    println!(
        "memory held by the loaded history: {:.1} MiB",
        (rss_after.saturating_sub(rss_before)) as f64 / 1024.0
    );
    match peak {
        Some(kib) => println!("`atelier history` peak RSS: {:.1} MiB", kib as f64 / 1024.0),
        None => println!("`atelier history` peak RSS: (install GNU time to measure)"),
    }
    Ok(())
}
