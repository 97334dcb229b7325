use clap::{Parser, Subcommand};

use atelier::cli::{self, Global};

/// atelier: image-to-image generation in the terminal.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(flatten)]
    tui: atelier::tui::TuiArgs,
    /// Without a command: the workstation on the project found from here.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Make a project (a folder that keeps every run).
    Init(cli::manage::InitArgs),
    /// Transform a source image by a prompt (img2img).
    Gen(cli::gen::GenArgs),
    /// List the project's runs.
    History(cli::history::HistoryArgs),
    /// One run: its record, and its image in the terminal.
    Show(cli::show::ShowArgs),
    /// Run a recipe again with changes (--set key=value), as a child run.
    Rerun(cli::rerun::RerunArgs),
    /// A grid of runs over one or two settings, with a contact sheet.
    Sweep(cli::sweep::SweepArgs),
    /// A side-by-side sheet of runs, differences labelled.
    Compare(cli::compare::CompareArgs),
    /// Copy runs' PNGs (settings embedded) to a folder.
    Export(cli::transfer::ExportArgs),
    /// Bring PNGs from atelier, A1111, Fooocus or sd.cpp into the project.
    Import(cli::transfer::ImportArgs),
    /// Star runs.
    Star(cli::manage::MarkArgs),
    /// Unstar runs.
    Unstar(cli::manage::MarkArgs),
    /// Add (+tag) or remove (-tag) tags.
    Tag(cli::manage::TagArgs),
    /// Set a run's note.
    Note(cli::manage::NoteArgs),
    /// Move runs to the trash.
    Rm(cli::manage::MarkArgs),
    /// The models on this machine (Hugging Face cache, model folders, checkpoints).
    Models(cli::models::ModelsArgs),
    /// Measure the engine's speed (random weights of SD 1.5, 2.1, XL, or a model folder).
    Bench(cli::bench::BenchArgs),
    /// The trash: list, restore, empty.
    #[command(subcommand)]
    Trash(cli::manage::TrashCommand),
}

fn main() {
    // Behave like other Unix tools in a pipe (`atelier history | head`):
    // end quietly when the reader goes away.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    atelier::engine::cpu::keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.command.is_none());
    let g = &cli.global;
    let Some(command) = cli.command else {
        if let Err(e) = atelier::tui::run(g, cli.tui) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    };
    let result = match command {
        Command::Init(a) => cli::manage::init(a),
        Command::Gen(a) => cli::gen::run(a, g),
        Command::History(a) => cli::history::run(a, g),
        Command::Show(a) => cli::show::run(a, g),
        Command::Rerun(a) => cli::rerun::run(a, g),
        Command::Sweep(a) => cli::sweep::run(a, g),
        Command::Compare(a) => cli::compare::run(a, g),
        Command::Export(a) => cli::transfer::export(a, g),
        Command::Import(a) => cli::transfer::import(a, g),
        Command::Star(a) => cli::manage::star(a, g, true),
        Command::Unstar(a) => cli::manage::star(a, g, false),
        Command::Tag(a) => cli::manage::tag(a, g),
        Command::Note(a) => cli::manage::note(a, g),
        Command::Rm(a) => cli::manage::rm(a, g),
        Command::Trash(c) => cli::manage::trash(c, g),
        Command::Bench(a) => cli::bench::run(a),
        Command::Models(a) => cli::models::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// How large `atelier.log` may grow before it is set aside.
const LOG_LIMIT_BYTES: u64 = 8 << 20;

/// Logs go to stderr for commands; the workstation owns the screen, so its
/// logs go to `atelier.log` in the data folder.
fn init_logging(to_file: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ATELIER_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if to_file { "info" } else { "warn" })
    });
    if to_file {
        let dir = atelier::config::data_dir();
        let path = dir.join("atelier.log");
        // Appended to by every start: past the limit the old log becomes
        // atelier.log.1 (replacing the one before), so it never grows
        // without bound.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > LOG_LIMIT_BYTES) {
            let _ = std::fs::rename(&path, dir.join("atelier.log.1"));
        }
        let file = std::fs::create_dir_all(&dir).and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        });
        if let Ok(file) = file {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
