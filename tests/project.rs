//! Projects and history through the binary: every command, the bad inputs,
//! and the crash-safety claims (a writer killed mid-run or mid-write).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use atelier::project::{Access, Project, Status};

fn atelier_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_atelier"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn err(out: Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// A project using the small SD 1.x parity model, and the source image path.
fn project() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let case = common::sd15_case();
    common::ok(&atelier_in(
        dir.path(),
        &["init", ".", "--model", case.join("model").to_str().unwrap()],
    ));
    (dir, case.join("source.png"))
}

fn gen(dir: &Path, source: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "gen",
        "--source",
        source,
        "--prompt",
        "a red fox",
        "--steps",
        "4",
        "--strength",
        "0.5",
        "--seed",
        "1",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    common::ok(&atelier_in(dir, &args))
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_rgb8().into_raw()
}

#[test]
fn gen_records_the_run_with_its_recipe_and_embeds_it_in_the_png() {
    let (dir, source) = project();
    let out = gen(dir.path(), source.to_str().unwrap(), &[]);
    assert!(out.starts_with("#1 "), "{out}");
    let project = Project::open(dir.path(), Access::Read).unwrap();
    let run = project.record(1).unwrap();
    assert_eq!(run.status, Status::Done);
    assert_eq!(run.steps_run, Some(2));
    assert_eq!(run.recipe.seed, 1);
    assert_eq!(
        run.recipe.scheduler, "ddim",
        "the model's scheduler, recorded"
    );
    assert_eq!((run.recipe.width, run.recipe.height), (128, 128));
    assert_eq!(run.model.fingerprint.len(), 16);
    assert_eq!(run.device, "cpu f32", "the device and its precision");
    assert_eq!(run.timings.as_ref().unwrap().steps_s.len(), 2);
    // The source is stored by content, once.
    gen(dir.path(), source.to_str().unwrap(), &[]);
    assert_eq!(
        std::fs::read_dir(dir.path().join("sources"))
            .unwrap()
            .count(),
        1
    );
    let stored = project.source_path(&run.source).unwrap();
    assert_eq!(
        std::fs::read(stored).unwrap(),
        std::fs::read(&source).unwrap()
    );
    // The PNG carries the parameters and the record.
    let texts = atelier::png_meta::read_png_texts(&project.image_path(1)).unwrap();
    assert!(texts
        .iter()
        .any(|(k, v)| k == "parameters" && v.contains("Seed: 1, Size: 128x128")));
    let record = &texts.iter().find(|(k, _)| k == "atelier").unwrap().1;
    let embedded: atelier::project::RunRecord = serde_json::from_str(record).unwrap();
    assert_eq!(embedded.recipe, run.recipe);
}

#[test]
fn the_projects_precision_is_the_default_and_dtype_overrides_it() {
    let (dir, source) = project();
    let settings = dir.path().join("atelier.toml");
    let mut text = std::fs::read_to_string(&settings).unwrap();
    text.push_str("dtype = \"bf16\"\n");
    std::fs::write(&settings, text).unwrap();
    let source = source.to_str().unwrap();
    let args = [
        "gen", "--source", source, "--prompt", "a fox", "--steps", "2", "--quiet",
    ];
    if atelier::engine::cpu::bf16::available() {
        common::ok(&atelier_in(dir.path(), &args));
        let project = Project::open(dir.path(), Access::Read).unwrap();
        assert_eq!(project.record(1).unwrap().device, "cpu bf16");
    } else {
        let e = err(atelier_in(dir.path(), &args));
        assert!(e.contains("AVX512-BF16"), "{e}");
    }
    let mut with_flag = args.to_vec();
    with_flag.extend(["--dtype", "f32"]);
    common::ok(&atelier_in(dir.path(), &with_flag));
    let project = Project::open(dir.path(), Access::Read).unwrap();
    let last = project.history().unwrap().runs.last().unwrap().clone();
    assert_eq!(last.device, "cpu f32", "--dtype wins over the project's");
    with_flag.pop();
    with_flag.push("f8");
    let e = err(atelier_in(dir.path(), &with_flag));
    assert!(e.contains("unknown dtype \"f8\""), "{e}");
}

#[test]
fn commands_find_the_project_from_a_subfolder_or_say_there_is_none() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    let sub = dir.path().join("notes/deep");
    std::fs::create_dir_all(&sub).unwrap();
    assert!(common::ok(&atelier_in(&sub, &["history"])).contains("#1"));
    let elsewhere = tempfile::tempdir().unwrap();
    let e = err(atelier_in(elsewhere.path(), &["history"]));
    assert!(
        e.contains("no atelier project") && e.contains("atelier init"),
        "{e}"
    );
    let e = err(atelier_in(
        elsewhere.path(),
        &["history", "--project", elsewhere.path().to_str().unwrap()],
    ));
    assert!(e.contains("is not an atelier project"), "{e}");
    // Outside a project gen needs --out.
    let e = err(atelier_in(
        elsewhere.path(),
        &["gen", "--source", source.to_str().unwrap(), "--prompt", "x"],
    ));
    assert!(e.contains("--out is required"), "{e}");
}

#[test]
fn rerun_without_changes_reproduces_the_bytes_and_with_changes_records_a_child() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    common::ok(&atelier_in(dir.path(), &["rerun", "1", "--quiet"]));
    common::ok(&atelier_in(
        dir.path(),
        &[
            "rerun",
            "#1",
            "--set",
            "strength=0.75",
            "--set",
            "prompt+=, at dusk",
            "--set",
            "seed=+1",
            "--quiet",
        ],
    ));
    let project = Project::open(dir.path(), Access::Read).unwrap();
    assert_eq!(
        pixels(&project.image_path(1)),
        pixels(&project.image_path(2))
    );
    let child = project.record(3).unwrap();
    assert_eq!(child.parent, Some(1));
    assert_eq!(child.recipe.prompt, "a red fox, at dusk");
    assert_eq!(
        (child.recipe.strength, child.recipe.seed, child.steps_run),
        (0.75, 2, Some(3))
    );
    assert_ne!(
        pixels(&project.image_path(1)),
        pixels(&project.image_path(3))
    );
}

#[test]
fn a_run_as_source_chains_img2img_with_the_lineage() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    gen(dir.path(), "#1", &[]);
    let project = Project::open(dir.path(), Access::Read).unwrap();
    let second = project.record(2).unwrap();
    assert_eq!((second.source_run, second.parent), (Some(1), Some(1)));
    assert_eq!(
        second.source,
        atelier::hash::hex_digest(&std::fs::read(project.image_path(1)).unwrap())
    );
    let e = err(atelier_in(
        dir.path(),
        &["gen", "--source", "#9", "--prompt", "x", "--quiet"],
    ));
    assert!(e.contains("no run #9"), "{e}");
}

#[test]
fn bad_ids_and_sets_are_explained() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    assert!(err(atelier_in(dir.path(), &["show", "42"])).contains("there is no run #42"));
    assert!(err(atelier_in(dir.path(), &["show", "fox"])).contains("is not a run id"));
    assert!(
        err(atelier_in(dir.path(), &["rerun", "1", "--set", "strength"])).contains("KEY=VALUE")
    );
    assert!(err(atelier_in(
        dir.path(),
        &["rerun", "1", "--set", "colour=red"]
    ))
    .contains("unknown key"));
    assert!(err(atelier_in(
        dir.path(),
        &["rerun", "1", "--set", "strength=2"]
    ))
    .contains("outside [0, 1]"));
    assert_eq!(
        Project::open(dir.path(), Access::Read)
            .unwrap()
            .history()
            .unwrap()
            .runs
            .len(),
        1,
        "nothing recorded"
    );
}

#[test]
fn history_filters_sorts_and_prints_json() {
    let (dir, source) = project();
    let s = source.to_str().unwrap();
    gen(dir.path(), s, &[]);
    common::ok(&atelier_in(
        dir.path(),
        &[
            "gen",
            "--source",
            s,
            "--prompt",
            "a castle at night",
            "--steps",
            "4",
            "--strength",
            "0.8",
            "--seed",
            "9",
            "--quiet",
        ],
    ));
    gen(dir.path(), "#1", &[]);
    common::ok(&atelier_in(dir.path(), &["star", "2"]));
    common::ok(&atelier_in(dir.path(), &["tag", "3", "+keeper"]));
    let table = common::ok(&atelier_in(dir.path(), &["history"]));
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.lines().next().unwrap().contains("SEED"));
    let only = |args: &[&str]| -> Vec<u64> {
        let mut a = vec!["history", "--json"];
        a.extend_from_slice(args);
        let json: serde_json::Value =
            serde_json::from_str(&common::ok(&atelier_in(dir.path(), &a))).unwrap();
        json.as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(only(&[]), vec![1, 2, 3]);
    assert_eq!(only(&["--starred"]), vec![2]);
    assert_eq!(only(&["--grep", "CASTLE"]), vec![2]);
    assert_eq!(only(&["--grep", "keeper"]), vec![3]);
    assert_eq!(only(&["--source", s]), vec![1, 2]);
    assert_eq!(
        only(&["--sort", "strength", "--reverse", "--limit", "1"]),
        vec![2]
    );
    assert_eq!(only(&["--since", "1h"]), vec![1, 2, 3]);
    assert_eq!(only(&["--since", "2999-01-01"]), Vec::<u64>::new());
    let json: serde_json::Value =
        serde_json::from_str(&common::ok(&atelier_in(dir.path(), &["history", "--json"]))).unwrap();
    let run = &json[2];
    for key in [
        "id",
        "created",
        "status",
        "parent",
        "source",
        "prompt",
        "negative",
        "strength",
        "steps",
        "guidance",
        "seed",
        "scheduler",
        "width",
        "height",
        "model",
    ] {
        assert!(run.get(key).is_some(), "missing {key}");
    }
    assert_eq!(run["parent"], 1);
}

#[test]
fn an_unreadable_record_is_reported_with_its_path_and_skipped() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    gen(dir.path(), source.to_str().unwrap(), &[]);
    std::fs::write(
        dir.path().join("runs/000001/run.toml"),
        "id = 1\nstatus = \"do",
    )
    .unwrap();
    let out = atelier_in(dir.path(), &["history"]);
    let (stdout, stderr) = (
        common::ok(&out.clone()),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(stdout.contains("#2") && !stdout.contains("#1 "), "{stdout}");
    assert!(stderr.contains("runs/000001/run.toml"), "{stderr}");
    // Writers open it too, and new ids never collide with the damaged one.
    gen(dir.path(), source.to_str().unwrap(), &[]);
    assert!(common::ok(&atelier_in(dir.path(), &["history"])).contains("#3"));
    assert!(err(atelier_in(dir.path(), &["show", "1"])).contains("damaged"));
}

#[test]
fn a_second_writer_is_told_who_holds_the_project_and_readers_still_work() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    let holder = Project::open(dir.path(), Access::Write).unwrap();
    let e = err(atelier_in(dir.path(), &["star", "1"]));
    assert!(
        e.contains("being written by another process")
            && e.contains(&format!("pid {}", std::process::id())),
        "{e}"
    );
    assert!(common::ok(&atelier_in(dir.path(), &["history"])).contains("#1"));
    common::ok(&atelier_in(dir.path(), &["show", "1", "--no-image"]));
    drop(holder);
    common::ok(&atelier_in(dir.path(), &["star", "1"]));
}

#[test]
fn a_writer_killed_mid_run_leaves_a_project_that_opens_with_that_run_failed() {
    let (dir, source) = project();
    // A long run: 999 steps of the small model take a while.
    let mut child = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .current_dir(dir.path())
        .args([
            "gen",
            "--source",
            source.to_str().unwrap(),
            "--prompt",
            "x",
            "--steps",
            "999",
            "--strength",
            "1",
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let record = dir.path().join("runs/000001/run.toml");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&record)
        .unwrap_or_default()
        .contains("running")
    {
        assert!(started.elapsed().as_secs() < 60, "the run never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let project = Project::open(dir.path(), Access::Write).unwrap();
    let run = project.record(1).unwrap();
    assert_eq!(run.status, Status::Failed);
    assert!(run.error.unwrap().contains("interrupted"));
    drop(project);
    gen(dir.path(), source.to_str().unwrap(), &[]);
}

#[test]
fn writers_killed_at_random_moments_never_leave_a_half_written_record() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    for i in 0..12u64 {
        // A sweep writes many records and images; kill it somewhere inside.
        let mut child = Command::new(env!("CARGO_BIN_EXE_atelier"))
            .current_dir(dir.path())
            .args(["sweep", "1", "--seed", "1..6", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(40 + i * 37 % 300));
        let _ = child.kill();
        child.wait().unwrap();
        let project = Project::open(dir.path(), Access::Write).unwrap();
        let history = project.history().unwrap();
        assert!(
            history.unreadable.is_empty(),
            "round {i}: {:?}",
            history.unreadable
        );
        for run in &history.runs {
            assert_ne!(
                run.status,
                Status::Running,
                "round {i}: #{} left running",
                run.id
            );
            if run.status == Status::Done {
                image::open(project.image_path(run.id)).unwrap();
            }
        }
    }
}

#[test]
fn sweep_queues_a_grid_and_draws_a_labelled_sheet() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    let out = common::ok(&atelier_in(
        dir.path(),
        &[
            "sweep",
            "1",
            "--strength",
            "0.3:0.7:0.2",
            "--seed",
            "1..2",
            "--quiet",
        ],
    ));
    assert!(out.contains("sheet: "), "{out}");
    let project = Project::open(dir.path(), Access::Read).unwrap();
    let runs = project.history().unwrap().runs;
    assert_eq!(runs.len(), 7);
    let grid: Vec<(f64, u64)> = runs[1..]
        .iter()
        .map(|r| (r.recipe.strength, r.recipe.seed))
        .collect();
    assert_eq!(
        grid,
        vec![(0.3, 1), (0.5, 1), (0.7, 1), (0.3, 2), (0.5, 2), (0.7, 2)]
    );
    assert!(runs[1..]
        .iter()
        .all(|r| r.parent == Some(1) && r.status == Status::Done));
    let sheet = image::open(dir.path().join("sheets/sweep-2-7.png")).unwrap();
    assert!(sheet.width() > 3 * 192 && sheet.height() > 2 * 192);
    assert!(err(atelier_in(dir.path(), &["sweep", "1"])).contains("one or two settings"));
    assert!(err(atelier_in(
        dir.path(),
        &["sweep", "1", "--seed", "1..100", "--steps", "1..5"]
    ))
    .contains("100 x 5 = 500 runs; at most 400"));
    assert_eq!(project.history().unwrap().runs.len(), 7, "nothing queued");
}

/// A cell that fails (this model's PNDM config asks for warm-up steps atelier
/// does not run) does not stop the sweep: the cells after it run, the sheet
/// is drawn, and the command fails naming the failed runs.
#[test]
fn a_failed_cell_leaves_the_rest_of_the_sweep_and_its_sheet() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    let out = atelier_in(
        dir.path(),
        &["sweep", "1", "--scheduler", "pndm,euler", "--quiet"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let message = err(out);
    assert!(
        message.contains("#2 (1/2) failed:") && message.contains("1 of 2 runs failed (#2)"),
        "{message}"
    );
    assert!(stdout.contains("sheet: "), "{stdout}");
    let project = Project::open(dir.path(), Access::Read).unwrap();
    let (failed, made) = (project.record(2).unwrap(), project.record(3).unwrap());
    assert_eq!(failed.status, Status::Failed);
    assert!(failed.error.unwrap().contains("PNDM"));
    assert_eq!(
        (made.status, made.recipe.scheduler.as_str()),
        (Status::Done, "euler")
    );
    assert!(dir.path().join("sheets/sweep-2-3.png").is_file());
}

#[test]
fn compare_labels_the_settings_that_differ() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    common::ok(&atelier_in(
        dir.path(),
        &["rerun", "1", "--set", "strength=0.75", "--quiet"],
    ));
    let out = common::ok(&atelier_in(
        dir.path(),
        &["compare", "1", "2", "--out", "cmp.png"],
    ));
    assert!(
        out.contains("#1: strength 0.5") && out.contains("#2: strength 0.75"),
        "{out}"
    );
    let sheet = image::open(dir.path().join("cmp.png")).unwrap();
    assert!(sheet.width() >= 3 * 256, "source and two runs");
}

#[test]
fn export_then_import_keeps_the_recipe_and_a1111_pngs_import_too() {
    let (dir, source) = project();
    gen(
        dir.path(),
        source.to_str().unwrap(),
        &["--negative", "blurry, dark"],
    );
    let out = tempfile::tempdir().unwrap();
    common::ok(&atelier_in(
        dir.path(),
        &["export", "1", "--to", out.path().to_str().unwrap()],
    ));
    let exported = out.path().join("atelier-1.png");
    assert!(common::ok(&atelier_in(
        dir.path(),
        &["import", exported.to_str().unwrap()]
    ))
    .contains("#2"));
    let project = Project::open(dir.path(), Access::Read).unwrap();
    let (a, b) = (project.record(1).unwrap(), project.record(2).unwrap());
    assert_eq!(a.recipe, b.recipe);
    assert_eq!(b.status, Status::Imported);

    // A PNG as A1111 writes it.
    let a1111 = out.path().join("a1111.png");
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([200, 100, 50]));
    let params = "a lighthouse, \"quoted\"\nNegative prompt: fog,\nrain\nSteps: 12, Sampler: Euler a, CFG scale: 5.5, Seed: 77, Size: 64x64, Model hash: abc, Model: dreamshaper, Denoising strength: 0.35, Version: v1.9.4";
    atelier::png_meta::write_png(&a1111, &img, &[("parameters", params)]).unwrap();
    common::ok(&atelier_in(
        dir.path(),
        &["import", a1111.to_str().unwrap()],
    ));
    let r = Project::open(dir.path(), Access::Read)
        .unwrap()
        .record(3)
        .unwrap();
    assert_eq!(r.recipe.prompt, "a lighthouse, \"quoted\"");
    assert_eq!(r.recipe.negative, "fog,\nrain");
    assert_eq!(
        (
            r.recipe.steps,
            r.recipe.guidance,
            r.recipe.seed,
            r.recipe.strength
        ),
        (12, 5.5, 77, 0.35)
    );
    assert_eq!(r.recipe.scheduler, "euler_a");
    assert_eq!(r.recipe.model, "dreamshaper");

    // A PNG without parameters.
    let plain = out.path().join("plain.png");
    img.save(&plain).unwrap();
    let e = err(atelier_in(dir.path(), &["import", plain.to_str().unwrap()]));
    assert!(e.contains("has no generation parameters"), "{e}");
}

#[test]
fn stars_tags_notes_and_the_trash() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    gen(dir.path(), source.to_str().unwrap(), &[]);
    common::ok(&atelier_in(dir.path(), &["star", "1"]));
    common::ok(&atelier_in(dir.path(), &["tag", "1", "+hero", "+maybe"]));
    common::ok(&atelier_in(dir.path(), &["tag", "1", "-maybe"]));
    common::ok(&atelier_in(dir.path(), &["note", "1", "the keeper"]));
    let r = Project::open(dir.path(), Access::Read)
        .unwrap()
        .record(1)
        .unwrap();
    assert!(r.starred);
    assert_eq!(r.tags, vec!["hero"]);
    assert_eq!(r.note, "the keeper");
    // A mistyped id among several changes none of them.
    assert!(err(atelier_in(dir.path(), &["unstar", "1", "9"])).contains("no run #9"));
    assert!(err(atelier_in(dir.path(), &["rm", "2", "9"])).contains("no run #9 to delete"));
    let project = Project::open(dir.path(), Access::Read).unwrap();
    assert!(project.record(1).unwrap().starred && project.record(2).is_ok());
    common::ok(&atelier_in(dir.path(), &["rm", "2"]));
    assert!(!common::ok(&atelier_in(dir.path(), &["history"])).contains("#2"));
    {
        // Listed with its settings, and while another process writes.
        let _writer = Project::open(dir.path(), Access::Write).unwrap();
        let list = common::ok(&atelier_in(dir.path(), &["trash", "list"]));
        let row = list
            .lines()
            .find(|l| l.contains("#2"))
            .unwrap_or_else(|| panic!("{list}"));
        assert!(row.contains("done"), "{list}");
        assert!(!list.contains("#1 "), "{list}");
    }
    // A deleted id is never reused.
    gen(dir.path(), source.to_str().unwrap(), &[]);
    assert!(common::ok(&atelier_in(dir.path(), &["history"])).contains("#3"));
    common::ok(&atelier_in(dir.path(), &["trash", "restore", "2"]));
    assert!(common::ok(&atelier_in(dir.path(), &["history"])).contains("#2"));
    common::ok(&atelier_in(dir.path(), &["rm", "2"]));
    assert!(common::ok(&atelier_in(dir.path(), &["trash", "empty"])).contains("deleted 1"));
    assert!(!dir.path().join("trash/000002").exists());
    let list = common::ok(&atelier_in(dir.path(), &["trash", "list"]));
    assert!(list.contains("the trash is empty"), "{list}");
}

/// A disk that fills while the image is written: the run ends failed with
/// the error and its recipe (seed included) on disk, and nothing half
/// written is left. The full disk is a small tmpfs over the project's
/// `runs/`, mounted in a mount namespace of this test's own (`unshare`).
#[test]
fn a_full_disk_fails_the_run_and_keeps_its_recipe() {
    if !common::can_unshare() {
        eprintln!("skipped: no `unshare -rm` here to mount a small disk");
        return;
    }
    let (dir, source) = project();
    // Two pages: room for the record (rewritten through a temporary file),
    // not for the image.
    let script = r#"
        mount -t tmpfs -o size=8k tmpfs runs || exit 90
        "$ATELIER" gen --source "$SOURCE" --prompt "a red fox" --steps 4 --seed 7 --quiet 2> gen.err
        echo $? > gen.rc
        cat runs/000001/run.toml > run.toml
        ls -A runs/000001 > files
        # Full to the last page, the next run cannot even be recorded.
        head -c 1000000 /dev/zero > runs/filler
        "$ATELIER" gen --source "$SOURCE" --prompt "a red fox" --steps 4 --quiet 2> gen2.err
        ls -A runs > runs.left
    "#;
    let status = Command::new("unshare")
        .args(["-rm", "sh", "-c", script])
        .current_dir(dir.path())
        .env("ATELIER", env!("CARGO_BIN_EXE_atelier"))
        .env("SOURCE", &source)
        .status()
        .unwrap();
    assert!(status.success(), "the script failed: {status}");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(read("gen.rc").trim(), "1");
    let stderr = read("gen.err");
    assert!(
        stderr.contains("#1 was not saved: cannot write")
            && stderr.contains("runs/000001/image.png: the disk is full")
            && stderr.contains("`atelier rerun 1` makes it again"),
        "{stderr}"
    );
    let record: toml::Value = toml::from_str(&read("run.toml")).unwrap();
    assert_eq!(record["status"].as_str(), Some("failed"));
    assert!(record["error"]
        .as_str()
        .unwrap()
        .contains("the disk is full"));
    assert_eq!(record["recipe"]["seed"].as_integer(), Some(7));
    assert_eq!(
        read("files").trim(),
        "run.toml",
        "no image, no temporary file"
    );
    assert!(
        read("gen2.err").contains("runs/000002/run.toml: the disk is full"),
        "{}",
        read("gen2.err")
    );
    assert_eq!(
        read("runs.left").split_whitespace().collect::<Vec<_>>(),
        ["000001", "filler"],
        "no folder left for the run that was never recorded"
    );
}

/// A source whose own size is over the limit (a phone photo) is refused
/// before a run is recorded, saying what to do; with a size it runs.
#[test]
fn a_source_too_large_for_its_own_size_is_refused_before_it_is_recorded() {
    let (dir, _) = project();
    let photo = dir.path().join("photo.png");
    image::RgbImage::from_pixel(2400, 1800, image::Rgb([90, 120, 200]))
        .save(&photo)
        .unwrap();
    let photo = photo.to_str().unwrap();
    let message = err(atelier_in(
        dir.path(),
        &["gen", "--source", photo, "--prompt", "a red fox", "--quiet"],
    ));
    assert!(
        message.contains("the generation size 2400x1800 is over the limit")
            && message.contains("--width 1024 keeps the aspect"),
        "{message}"
    );
    let project = Project::open(dir.path(), Access::Read).unwrap();
    assert!(
        project.history().unwrap().runs.is_empty(),
        "no run recorded"
    );
    gen(dir.path(), photo, &["--width", "64"]);
    let run = project.record(1).unwrap();
    assert_eq!((run.recipe.width, run.recipe.height), (64, 48));
    // So is a crop past the source's edge.
    let message = err(atelier_in(
        dir.path(),
        &["rerun", "1", "--set", "crop=2000,0,800,800", "--quiet"],
    ));
    assert!(
        message.contains("reaches outside the 2400x1800 source"),
        "{message}"
    );
    // And settings that run no step at all.
    let message = err(atelier_in(
        dir.path(),
        &["rerun", "1", "--set", "strength=0.05", "--quiet"],
    ));
    assert!(message.contains("runs no denoising step"), "{message}");
    // And a model that can name nothing: no folder, alias or org/name.
    let message = err(atelier_in(
        dir.path(),
        &["rerun", "1", "--set", "model=/no/such/model", "--quiet"],
    ));
    assert!(
        message.contains("model /no/such/model does not exist"),
        "{message}"
    );
    assert_eq!(project.history().unwrap().runs.len(), 1, "no run recorded");
    let other = tempfile::tempdir().unwrap();
    let message = err(atelier_in(
        other.path(),
        &["init", "p", "--model", "/no/such/model"],
    ));
    assert!(message.contains("does not exist"), "{message}");
    assert!(!other.path().join("p").exists(), "no project made");
}

/// `atelier` without a command, where there is no terminal (a script, a
/// pipe), says what to use instead of panicking in the terminal setup.
#[test]
fn the_workstation_without_a_terminal_points_to_the_commands() {
    let (dir, _) = project();
    let message = err(atelier_in(dir.path(), &[]));
    assert!(
        message.starts_with("error: the workstation needs a terminal")
            && message.contains("atelier gen"),
        "{message}"
    );
}

/// A misspelt setting in atelier.toml is an error naming it, not a default
/// silently used instead.
#[test]
fn a_misspelt_project_setting_is_named() {
    let (dir, _) = project();
    let path = dir.path().join("atelier.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("strenght = 0.4\n");
    std::fs::write(&path, text).unwrap();
    let message = err(atelier_in(dir.path(), &["history"]));
    assert!(
        message.contains("atelier.toml is not valid")
            && message.contains("unknown field `strenght`"),
        "{message}"
    );
}

/// `export` to a name ending in .png writes that file for one run; for
/// several, or with a run that has no image, it writes nothing and says why.
#[test]
fn export_to_a_file_name_and_nothing_half_done() {
    let (dir, source) = project();
    gen(dir.path(), source.to_str().unwrap(), &[]);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("hero.png");
    common::ok(&atelier_in(
        dir.path(),
        &["export", "1", "--to", file.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(dir.path().join("runs/000001/image.png")).unwrap()
    );
    let two = out.path().join("two.png");
    assert!(err(atelier_in(
        dir.path(),
        &["export", "1", "1", "--to", two.to_str().unwrap()]
    ))
    .contains("names one file, for 2 runs"));
    let folder = out.path().join("folder");
    assert!(err(atelier_in(
        dir.path(),
        &["export", "1", "7", "--to", folder.to_str().unwrap()]
    ))
    .contains("no run #7"));
    assert!(
        !folder.exists(),
        "nothing written when one of the runs cannot be"
    );
}
