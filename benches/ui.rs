//! The workstation's drawing cost: one frame with 10,000 runs in history
//! (TestBackend, 160x50, no image), and the time from start to the first
//! frame of the real binary on a 10,000-run project (in tmux, from its log).
//!
//!     cargo bench --bench ui

use std::process::Command;
use std::time::{Duration, Instant};

use atelier::engine::Fit;
use atelier::project::{ModelRef, Project, RunRecord, Status};
use atelier::recipe::Recipe;
use atelier::tui::keymap::{Command as Key, Keymap};
use atelier::tui::state::{update, Action, State};
use atelier::tui::theme::Theme;
use atelier::tui::view;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn record(id: u64) -> RunRecord {
    RunRecord {
        id,
        created: format!("2026-11-{:02}T{:02}:00:00Z", 1 + id % 27, id % 24),
        status: Status::Done,
        error: None,
        parent: (id > 1 && id.is_multiple_of(3)).then(|| id - 1),
        source: format!("{:064x}", id % 40),
        source_run: None,
        steps_run: Some(18),
        device: "cuda:0".into(),
        starred: id.is_multiple_of(17),
        tags: vec![],
        note: String::new(),
        recipe: Recipe {
            prompt: format!(
                "a photograph of a product on a marble table, soft studio light, variation {id}"
            ),
            negative: "blurry".into(),
            strength: 0.3 + (id % 7) as f64 * 0.1,
            steps: 30,
            guidance: 7.5,
            seed: id,
            scheduler: "dpmpp_2m".into(),
            width: 768,
            height: 512,
            crop: None,
            fit: Fit::Crop,
            model: "sd21".into(),
        },
        model: ModelRef::default(),
        timings: None,
    }
}

fn main() -> anyhow::Result<()> {
    let n = 10_000u64;
    let runs: Vec<RunRecord> = (1..=n).map(record).collect();
    let (theme, keymap) = (Theme::load("dark", None)?, Keymap::default());
    // Every run has a thumbnail, as after scrolling through all of them.
    let thumbs: atelier::tui::images::Thumbs = runs
        .iter()
        .map(|r| {
            (
                r.id,
                image::RgbImage::from_pixel(6, 4, image::Rgb([r.id as u8, 90, 160])),
            )
        })
        .collect();

    for presses in 0..3 {
        let mut state = State::new(runs.clone(), "sd21".into());
        for _ in 0..presses {
            update(&mut state, Action::Command(Key::NextView));
        }
        let mut terminal = Terminal::new(TestBackend::new(160, 50))?;
        let frames = 300;
        let started = Instant::now();
        for i in 0..frames {
            update(
                &mut state,
                Action::Command(if i % 2 == 0 {
                    Key::MoveDown
                } else {
                    Key::MoveUp
                }),
            );
            terminal.draw(|f| view::draw(f, &state, &theme, &keymap, None, Some(&thumbs)))?;
        }
        let per_frame = started.elapsed().as_secs_f64() / frames as f64;
        let rows = 23.0; // runs visible at 160x50 (two lines each, with thumbnails)
        println!(
            "{} runs, view {:<12}: {:.3} ms per frame (move + draw), {:.4} ms per visible row",
            n,
            state.view.name(),
            per_frame * 1e3,
            per_frame * 1e3 / rows
        );
    }
    let started = Instant::now();
    let mut state = State::new(runs.clone(), "sd21".into());
    update(&mut state, Action::Command(Key::NextView));
    println!(
        "rebuilding the view (by source) over {n} runs: {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    // Start to first frame of the real binary, in tmux.
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("start to first frame: (needs tmux)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let data = tempfile::tempdir()?;
    let project = Project::init(dir.path())?;
    for r in &runs {
        let run_dir = project.run_dir(r.id);
        std::fs::create_dir_all(&run_dir)?;
        std::fs::write(run_dir.join("run.toml"), r.to_toml()?)?;
    }
    drop(project);
    std::fs::write(
        data.path().join("config.toml"),
        "image_protocol = \"halfblocks\"\n",
    )?;
    let session = format!("atelier-ui-bench-{}", std::process::id());
    let mut firsts = Vec::new();
    for _ in 0..5 {
        let _ = std::fs::remove_file(data.path().join("atelier.log"));
        let cmd = format!(
            "cd '{}' && ATELIER_CONFIG_DIR='{}' ATELIER_DATA_DIR='{}' '{}' --device cpu",
            dir.path().display(),
            data.path().display(),
            data.path().display(),
            env!("CARGO_BIN_EXE_atelier")
        );
        Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                "160",
                "-y",
                "50",
                &cmd,
            ])
            .status()?;
        let started = Instant::now();
        let ms = loop {
            let log = std::fs::read_to_string(data.path().join("atelier.log")).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains("first frame after")) {
                break line
                    .split("first frame after ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|v| v.parse::<f64>().ok());
            }
            if started.elapsed() > Duration::from_secs(30) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &session])
            .status();
        if let Some(ms) = ms {
            firsts.push(ms);
        }
    }
    firsts.sort_by(f64::total_cmp);
    match firsts.get(firsts.len() / 2) {
        Some(ms) => println!(
            "start to first frame with {n} runs (median of {}): {ms:.0} ms",
            firsts.len()
        ),
        None => println!("start to first frame: not measured (no log line)"),
    }
    Ok(())
}
