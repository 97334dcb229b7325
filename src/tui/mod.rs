//! The workstation: `atelier` with no subcommand. A keyboard-only ratatui
//! interface over the project, with generation in a worker thread and
//! images decoded and encoded off the UI thread.

mod follow;
pub mod images;
pub mod keymap;
mod picker;
pub mod state;
pub mod theme;
mod tmux;
pub mod view;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossterm::event::{self, Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui_image::picker::Picker;

use self::images::{ImageSlot, Request, Response};
use self::keymap::{Command, Keymap};
use self::state::{
    update, Action, CropKey, Effect, Job, JobState, Mode, PickKey, SourceChoice, State, TextKey,
};
use self::theme::Theme;
use self::view::PreviewTarget;
use crate::cli::runner::DeviceArgs;
use crate::engine::Engine;
use crate::jobs::{PlannedRun, SourceRef};
use crate::project::{Access, Project, ProjectBusy, Status};

/// Options of `atelier` without a subcommand.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TuiArgs {
    /// The model for new runs [default: the project's, else sd-turbo].
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The keymap: defaults with `keymap.toml` from the config folder on top.
pub fn load_keymap() -> Result<Keymap> {
    match crate::config::config_dir()
        .map(|d| d.join("keymap.toml"))
        .filter(|p| p.is_file())
    {
        Some(path) => Keymap::with_overrides(&std::fs::read_to_string(&path)?, &path),
        None => Ok(Keymap::default()),
    }
}

fn crop_key(key: KeyEvent) -> Option<CropKey> {
    Some(match key.code {
        KeyCode::Left | KeyCode::Char('h') => CropKey::Left,
        KeyCode::Right | KeyCode::Char('l') => CropKey::Right,
        KeyCode::Up | KeyCode::Char('k') => CropKey::Up,
        KeyCode::Down | KeyCode::Char('j') => CropKey::Down,
        KeyCode::Char('+') | KeyCode::Char('=') => CropKey::Grow,
        KeyCode::Char('-') => CropKey::Shrink,
        KeyCode::Char('a') => CropKey::Aspect,
        KeyCode::Char('0') | KeyCode::Backspace => CropKey::Clear,
        KeyCode::Esc | KeyCode::Enter | KeyCode::Char('c') => CropKey::Done,
        _ => return None,
    })
}

fn pick_key(key: KeyEvent) -> Option<PickKey> {
    Some(match key.code {
        KeyCode::Down | KeyCode::Char('j') => PickKey::Next,
        KeyCode::Up | KeyCode::Char('k') => PickKey::Previous,
        KeyCode::Enter => PickKey::Choose,
        KeyCode::Esc | KeyCode::Char('q') => PickKey::Close,
        _ => return None,
    })
}

/// Built-in styles plus the user's `styles.toml` (`[[style]]` tables with
/// name, prompt, negative).
pub fn load_styles() -> Result<Vec<state::Style>> {
    let mut styles = state::builtin_styles();
    if let Some(path) = crate::config::config_dir()
        .map(|d| d.join("styles.toml"))
        .filter(|p| p.is_file())
    {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            style: Vec<state::Style>,
        }
        let file: File = toml::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{} is not valid", path.display()))?;
        styles.extend(file.style);
    }
    Ok(styles)
}

fn text_key(key: KeyEvent) -> Option<TextKey> {
    match key.code {
        KeyCode::Esc => Some(TextKey::Done),
        KeyCode::Enter => Some(TextKey::Newline),
        KeyCode::Backspace => Some(TextKey::Backspace),
        KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
            Some(TextKey::Char(c))
        }
        _ => None,
    }
}

pub fn run(global: &crate::cli::Global, args: TuiArgs) -> Result<()> {
    let started = Instant::now();
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        bail!(
            "the workstation needs a terminal (its input and output are not one here); \
             scripts use the commands: atelier gen, history, show, rerun, sweep (atelier --help)"
        );
    }
    // Download progress bars would draw over the screen.
    crate::models::set_download_progress(false);
    let root = Project::locate(global.project.as_deref())?;
    // Another writer (a sweep from a script), or a project this user or
    // disk cannot write: browse it, read-only, and follow what changes.
    let mut read_only = None;
    let project = match Project::open(&root, Access::Write) {
        Ok(project) => project,
        Err(e) => match Project::open(&root, Access::Read) {
            Ok(project) => {
                read_only = Some(match e.downcast_ref::<ProjectBusy>() {
                    Some(busy) => format!("{} writes the project", busy.holder),
                    None => format!("the project cannot be written ({e:#})"),
                });
                project
            }
            Err(_) => return Err(e),
        },
    };
    let project = Arc::new(project);
    let config = crate::config::load()?;
    let theme_dir = crate::config::config_dir().map(|d| d.join("themes"));
    let theme = Theme::resolve(config.theme.as_deref(), theme_dir.as_deref())?;
    let keymap = load_keymap()?;
    let history = project.history()?;
    let model = args
        .model
        .or(project.settings.model.clone())
        .unwrap_or_else(|| crate::models::DEFAULT_MODEL.to_string());
    let (device_name, device, dtype) = args.device.open(Some(&project.settings))?;

    let mut state = State::new(history.runs, model);
    state.device = crate::engine::device::label(&device_name, dtype);
    state.styles = load_styles()?;
    if let Some(bad) = history.unreadable.first() {
        state.message = format!(
            "skipped {} unreadable record(s), e.g. {}",
            history.unreadable.len(),
            bad.path.display()
        );
    }
    // Jobs queued before resume, unless they are another writer's.
    state.read_only = read_only;
    if state.read_only.is_none() {
        state.resume_queued();
    }

    let mut terminal = ratatui::init();
    // The first frame comes before the terminal is asked about images.
    terminal.draw(|frame| view::draw(frame, &state, &theme, &keymap, None, None))?;
    tracing::info!(
        "first frame after {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    // After the first frame: it reads the model folders and the hub cache.
    state.models = local_models(&config);
    // Making the picker turns tmux's passthrough on; put back when run returns.
    let passthrough = tmux::PassthroughRestore::save();
    let compress = config.kitty_compression.unwrap_or_else(picker::over_ssh);
    let picker = picker::picker(config.image_protocol.as_deref(), compress);
    tracing::info!(
        "ready after {:.0} ms, images by {:?}{}",
        started.elapsed().as_secs_f64() * 1000.0,
        picker.protocol_type(),
        if picker::compresses(&picker) {
            ", deflated"
        } else {
            ""
        }
    );
    // Read-only, the status line says so instead.
    if state.message.is_empty() && state.read_only.is_none() {
        state.message =
            format!("ready: images as {:?}; ? for help", picker.protocol_type()).to_lowercase();
    }
    let result = event_loop(
        &mut terminal,
        &project,
        state,
        &theme,
        &keymap,
        picker,
        Engine::new(device, dtype),
        device_name,
        passthrough.as_ref(),
    );
    ratatui::restore();
    result
}

#[allow(clippy::too_many_arguments)]
fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    project: &Arc<Project>,
    mut state: State,
    theme: &Theme,
    keymap: &Keymap,
    picker: Picker,
    engine: Engine,
    device: String,
    passthrough: Option<&tmux::PassthroughRestore>,
) -> Result<()> {
    let (job_tx, job_rx) = mpsc::channel();
    let (report_tx, report_rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    worker::spawn(
        project.clone(),
        engine,
        device.clone(),
        job_rx,
        report_tx,
        cancel.clone(),
        || {},
    );
    let (image_tx, image_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    images::spawn(picker, image_rx, ready_tx, || {});

    let mut worker_busy = false;
    let mut thumbs = images::Thumbs::new();
    let mut thumbs_requested = std::collections::HashSet::new();
    let mut sized: Option<SourceChoice> = None;
    let mut slot: Option<ImageSlot> = None;
    let mut shown: Option<PreviewTarget> = None;
    let mut generation = 0u64;
    let mut live: Option<(u64, image::RgbImage)> = None;
    let mut dirty = true;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut follower = follow::Follower::new();

    loop {
        match follower.poll(project, &mut state) {
            Ok(changed) => dirty |= changed,
            Err(e) => {
                state.message = format!("cannot read the project: {e:#}");
                dirty = true;
            }
        }

        // Hand the next queued job to an idle worker.
        if !worker_busy {
            if let Some(id) = state
                .jobs
                .iter()
                .find(|j| j.state == JobState::Queued)
                .map(|j| j.id)
            {
                match project
                    .record(id)
                    .and_then(|r| crate::jobs::plan_of(project, &r).map(|p| (r, p)))
                {
                    Ok((record, plan)) => {
                        let _ = job_tx.send(worker::Job::Run {
                            record: Box::new(record),
                            plan: Box::new(plan),
                        });
                        worker_busy = true;
                        update(&mut state, Action::JobLoading(id));
                    }
                    Err(e) => {
                        state.jobs.retain(|j| j.id != id);
                        update(
                            &mut state,
                            Action::Message(format!("cannot start #{id}: {e:#}")),
                        );
                    }
                }
                dirty = true;
            }
        }

        // Thumbnails for the runs around the selection.
        for &(i, _) in &state.visible[view::history_window(&state, 60)] {
            let r = &state.runs[i];
            if r.status.has_image() && thumbs_requested.insert(r.id) {
                let _ = image_tx.send(Request::Thumb {
                    id: r.id,
                    path: project.image_path(r.id),
                });
            }
        }

        // The crop needs the size of the source the editor would use.
        let source_key = state.editor.source.clone().or_else(|| {
            state.selected_run().map(|r| SourceChoice {
                hash: r.source.clone(),
                run: r.source_run,
            })
        });
        if source_key != sized {
            sized = source_key.clone();
            let path = source_key.and_then(|s| {
                if s.hash.is_empty() {
                    s.run.map(|id| project.image_path(id))
                } else {
                    project.source_path(&s.hash)
                }
            });
            // As the engine will see it: a phone photo's orientation applied.
            if let Some((w, h)) =
                path.and_then(|p| crate::engine::source::oriented_dimensions(&p).ok())
            {
                update(&mut state, Action::SourceSize(w, h));
            }
        }

        // The preview follows the selection.
        let target = view::preview_target(&state).map(|(t, _)| t);
        if target != shown {
            generation += 1;
            shown = target.clone();
            slot = None;
            let request = match &target {
                Some(key @ PreviewTarget::Run(id)) => Some(Request::Load {
                    generation,
                    key: key.clone(),
                    path: project.image_path(*id),
                }),
                Some(key @ PreviewTarget::Source(hash)) => {
                    project.source_path(hash).map(|path| Request::Load {
                        generation,
                        key: key.clone(),
                        path,
                    })
                }
                Some(PreviewTarget::Live(id)) => {
                    live.as_ref()
                        .filter(|(l, _)| l == id)
                        .map(|(_, img)| Request::Show {
                            generation,
                            image: image::DynamicImage::ImageRgb8(img.clone()),
                        })
                }
                None => None,
            };
            if let Some(request) = request {
                slot = Some(ImageSlot::pending(generation, image_tx.clone()));
                let _ = image_tx.send(request);
            }
            dirty = true;
        }

        if dirty && last_draw.elapsed() >= Duration::from_millis(10) {
            terminal.draw(|frame| {
                view::draw(
                    frame,
                    &state,
                    theme,
                    keymap,
                    slot.as_mut().filter(|s| s.is_ready()),
                    Some(&thumbs),
                )
            })?;
            last_draw = Instant::now();
            dirty = false;
        }

        // Input, at most 20 ms apart from the channels below.
        if event::poll(Duration::from_millis(20))? {
            match event::read()? {
                TermEvent::Key(key)
                    if key.kind != KeyEventKind::Release
                        && state.mode == Mode::Normal
                        && key.code == KeyCode::Char('z')
                        && key.modifiers.contains(KeyModifiers::CONTROL) =>
                {
                    match passthrough {
                        Some(p) => p.while_stopped(|| suspend(terminal))?,
                        None => suspend(terminal)?,
                    }
                    dirty = true;
                }
                TermEvent::Key(key) if key.kind != KeyEventKind::Release => {
                    let action = match state.mode {
                        Mode::Edit(_) | Mode::Filter => text_key(key).map(Action::Text),
                        Mode::ConfirmQuit => Some(Action::Command(
                            if keymap.command(key) == Some(Command::Quit) {
                                Command::Quit
                            } else {
                                Command::Help
                            },
                        )),
                        // j/k scroll the help where it does not fit; any
                        // other key (or any at all, where it fits) closes it.
                        Mode::Help(_) => Some(Action::Command(match keymap.command(key) {
                            Some(c @ (Command::MoveDown | Command::MoveUp))
                                if help_max_offset(terminal)? > 0 =>
                            {
                                c
                            }
                            _ => Command::Help,
                        })),
                        Mode::Crop => crop_key(key).map(Action::Crop),
                        Mode::Styles(_) => pick_key(key).map(Action::Pick),
                        Mode::Normal
                            if key.code == KeyCode::Char('c')
                                && key.modifiers.contains(KeyModifiers::CONTROL) =>
                        {
                            Some(Action::Command(Command::Quit))
                        }
                        Mode::Normal => keymap.command(key).map(Action::Command),
                    };
                    if let Some(action) = action {
                        state.next_random = rand::random::<u32>() as u64;
                        state.message.clear();
                        let effects = update(&mut state, action);
                        // The help scrolls no further than its last line.
                        if let Mode::Help(offset) = state.mode {
                            state.mode = Mode::Help(offset.min(help_max_offset(terminal)?));
                        }
                        if run_effects(effects, &mut state, project, &device, &cancel)? {
                            return Ok(());
                        }
                        dirty = true;
                    }
                }
                TermEvent::Resize(_, _) => dirty = true,
                _ => {}
            }
        }

        while let Ok(report) = report_rx.try_recv() {
            dirty = true;
            match report {
                worker::Report::Loading(id) => {
                    update(&mut state, Action::JobLoading(id));
                }
                worker::Report::Step {
                    id,
                    step,
                    of,
                    seconds,
                    preview,
                } => {
                    update(
                        &mut state,
                        Action::JobStep {
                            id,
                            step,
                            of,
                            seconds,
                        },
                    );
                    if shown == Some(PreviewTarget::Live(id)) {
                        let _ = image_tx.send(Request::Show {
                            generation,
                            image: image::DynamicImage::ImageRgb8(preview.clone()),
                        });
                        if slot.is_none() {
                            slot = Some(ImageSlot::pending(generation, image_tx.clone()));
                        }
                    }
                    live = Some((id, preview));
                }
                worker::Report::Decoding(id) => {
                    update(&mut state, Action::JobDecoding(id));
                }
                worker::Report::Ended(record) => {
                    let id = record.id;
                    update(&mut state, Action::RunChanged(record));
                    update(&mut state, Action::JobEnded(id));
                    worker_busy = false;
                    thumbs_requested.remove(&id);
                    live = None;
                    // Show the finished image instead of the live preview.
                    shown = None;
                }
            }
        }
        while let Ok(response) = ready_rx.try_recv() {
            if let Response::Thumb { id, image } = response {
                thumbs.insert(id, image);
                dirty = true;
                continue;
            }
            if let Some(s) = slot.as_mut() {
                if let Some(error) = s.accept(response) {
                    state.message = format!("cannot show the image: {error}");
                }
            }
            dirty = true;
        }
    }
}

/// The complete models on this machine, by the name `--model` takes (the
/// alias where there is one), for `M`.
fn local_models(config: &crate::config::Config) -> Vec<String> {
    let cache = crate::models::hf_cache_dir();
    crate::models::list::list(cache.as_deref(), &config.model_folders())
        .into_iter()
        .filter(|m| m.missing.is_none())
        .map(|m| m.alias.unwrap_or(m.name))
        .collect()
}

/// How far the help scrolls on this terminal (0 where it fits).
fn help_max_offset(terminal: &ratatui::DefaultTerminal) -> Result<usize> {
    let size = terminal.size()?;
    let area = ratatui::layout::Rect::new(0, 0, size.width, size.height);
    Ok(view::help_max_offset(area, Command::ALL.len()))
}

/// Ctrl-Z: give the terminal back, stop like any job-controlled program
/// (the whole process, the worker included), and take the screen again on `fg`.
fn suspend(terminal: &mut ratatui::DefaultTerminal) -> Result<()> {
    ratatui::restore();
    #[cfg(unix)]
    // SAFETY: raising a signal on ourselves; SIGTSTP's default action stops
    // the process until SIGCONT.
    unsafe {
        libc::raise(libc::SIGTSTP);
    }
    *terminal = ratatui::init();
    terminal.clear()?;
    Ok(())
}

/// On quit, the job the worker has started goes back to queued, so that
/// it runs again next time like the jobs behind it; its worker stops when
/// the process ends, which leaves no output behind. Should the worker
/// write it as done in between, the next start makes the same image again
/// (its seed is in the record), so a race loses nothing.
fn requeue_started(project: &Project, state: &State) -> Result<()> {
    for job in state.jobs.iter().filter(|j| j.state != JobState::Queued) {
        let Ok(mut record) = project.record(job.id) else {
            continue;
        };
        if record.status == Status::Running {
            record.status = Status::Queued;
            project.write_record(&record)?;
        }
    }
    Ok(())
}

/// Carries out effects; true when the UI should quit.
fn run_effects(
    effects: Vec<Effect>,
    state: &mut State,
    project: &Project,
    device: &str,
    cancel: &AtomicBool,
) -> Result<bool> {
    for effect in effects {
        let writes = matches!(
            effect,
            Effect::Queue { .. } | Effect::Dequeue(_) | Effect::SetStar { .. }
        );
        if writes && !project.is_writable() {
            match follow::take_over(project, state) {
                Ok(true) => {}
                Ok(false) => {
                    state.message = format!(
                        "read-only: {}; try again once it can be written",
                        state
                            .read_only
                            .as_deref()
                            .unwrap_or("another process writes")
                    );
                    continue;
                }
                Err(e) => {
                    state.message = format!("cannot take the project over: {e:#}");
                    continue;
                }
            }
        }
        match effect {
            Effect::Quit => {
                requeue_started(project, state)?;
                return Ok(true);
            }
            Effect::Cancel(_) => cancel.store(true, Ordering::SeqCst),
            Effect::Reorder(_) => {} // the state's order is the dispatch order
            Effect::Dequeue(id) => {
                if let Ok(mut record) = project.record(id) {
                    record.status = Status::Cancelled;
                    project.write_record(&record)?;
                    update(state, Action::RunChanged(Box::new(record)));
                }
            }
            Effect::SetStar { id, starred } => {
                let mut record = project.record(id)?;
                record.starred = starred;
                project.write_record(&record)?;
                update(state, Action::RunChanged(Box::new(record)));
            }
            Effect::Queue {
                recipes,
                source,
                parent,
            } => match queue(project, device, recipes, &source, parent) {
                Ok(records) => {
                    for record in records {
                        let id = record.id;
                        update(state, Action::RunChanged(Box::new(record)));
                        state.jobs.push(Job {
                            id,
                            state: JobState::Queued,
                        });
                    }
                    // Show the newest run.
                    update(state, Action::Command(Command::Top));
                }
                Err(e) => state.message = format!("cannot queue: {e:#}"),
            },
        }
    }
    Ok(false)
}

fn queue(
    project: &Project,
    device: &str,
    recipes: Vec<crate::recipe::Recipe>,
    source: &SourceChoice,
    parent: Option<u64>,
) -> Result<Vec<crate::project::RunRecord>> {
    let source = if !source.hash.is_empty() {
        let file = project.source_path(&source.hash).with_context(|| {
            format!(
                "the source {} is missing from the project",
                &source.hash[..source.hash.len().min(12)]
            )
        })?;
        SourceRef {
            hash: source.hash.clone(),
            file,
            run: source.run,
        }
    } else {
        crate::jobs::source_from_run(project, source.run.context("no source")?)?
    };
    let plans = recipes
        .into_iter()
        .map(|recipe| PlannedRun {
            recipe,
            source: source.clone(),
            parent,
            noise_file: None,
            out: None,
        })
        .collect();
    Ok(crate::jobs::queue(project, plans, device)?
        .into_iter()
        .map(|(r, _)| r)
        .collect())
}
