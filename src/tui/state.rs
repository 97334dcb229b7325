//! The workstation's state and its pure `update(state, action) -> effects`.
//! No IO here: effects are data that the event loop carries out, and the
//! worker's and loaders' answers come back as actions.

use crate::engine::{Fit, SchedulerKind};
use crate::project::{RunRecord, Status};
use crate::recipe::Recipe;

use super::keymap::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewMode {
    Newest,
    BySource,
    Lineage,
}

impl ViewMode {
    pub fn name(self) -> &'static str {
        match self {
            ViewMode::Newest => "newest first",
            ViewMode::BySource => "by source",
            ViewMode::Lineage => "lineage",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    Fixed(u64),
    Random,
}

/// What the next generation starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceChoice {
    pub hash: String,
    /// When the source is a run's output (the img2img chain).
    pub run: Option<u64>,
}

/// The recipe being edited.
#[derive(Debug, Clone, PartialEq)]
pub struct Editor {
    /// A rectangle of the source, in source pixels.
    pub crop: Option<crate::engine::CropRect>,
    /// Index into `ASPECTS` for the crop.
    pub aspect: usize,
    pub prompt: String,
    pub negative: String,
    pub strength: f64,
    pub steps: usize,
    pub guidance: f64,
    pub seed: Seed,
    pub count: usize,
    /// Empty: the model's own.
    pub scheduler: String,
    pub width: u32,
    pub height: u32,
    pub fit: Fit,
    pub model: String,
    pub source: Option<SourceChoice>,
    /// The run recalled into the editor: new runs record it as parent.
    pub parent: Option<u64>,
}

impl Editor {
    pub fn new(model: String) -> Self {
        let (steps, guidance) = crate::models::recommended_steps_guidance(&model);
        Editor {
            crop: None,
            aspect: 0,
            prompt: String::new(),
            negative: String::new(),
            strength: 0.6,
            steps,
            guidance,
            seed: Seed::Random,
            count: 1,
            scheduler: String::new(),
            width: 0,
            height: 0,
            fit: Fit::Crop,
            model,
            source: None,
            parent: None,
        }
    }

    /// The steps that will actually run: diffusers' `min(int(steps * strength), steps)`.
    pub fn steps_run(&self) -> usize {
        ((self.steps as f64 * self.strength) as usize).min(self.steps)
    }

    /// The recipe for variation `i`, with `random` drawn by the caller.
    pub fn recipe(&self, i: usize, random: u64) -> Recipe {
        let seed = match self.seed {
            Seed::Fixed(s) => s,
            Seed::Random => random,
        };
        Recipe {
            prompt: self.prompt.clone(),
            negative: self.negative.clone(),
            strength: self.strength,
            steps: self.steps,
            guidance: self.guidance,
            seed: seed.wrapping_add(i as u64),
            scheduler: self.scheduler.clone(),
            width: self.width,
            height: self.height,
            crop: self.crop,
            fit: self.fit,
            model: self.model.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    Prompt,
    Negative,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    /// Typing into the prompt or negative prompt.
    Edit(TextField),
    /// Typing the history filter.
    Filter,
    /// The keys, scrolled down this many lines where they do not fit.
    Help(usize),
    ConfirmQuit,
    /// Choosing the crop rectangle of the source.
    Crop,
    /// Choosing a style to insert; the index of the highlighted one.
    Styles(usize),
}

/// A saved prompt snippet (`styles.toml` in the config folder).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Style {
    pub name: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub negative: String,
}

/// The styles atelier ships with; the user's `styles.toml` adds to them.
pub fn builtin_styles() -> Vec<Style> {
    let s = |name: &str, prompt: &str, negative: &str| Style {
        name: name.into(),
        prompt: prompt.into(),
        negative: negative.into(),
    };
    vec![
        s(
            "photographic",
            ", 35mm photograph, natural light, sharp focus, film grain",
            "painting, illustration, cartoon",
        ),
        s(
            "cinematic",
            ", cinematic still, dramatic lighting, shallow depth of field, anamorphic",
            "flat lighting",
        ),
        s(
            "product shot",
            ", studio product photography, softbox lighting, clean background, high detail",
            "clutter, text, watermark",
        ),
        s(
            "oil painting",
            ", oil painting, visible brush strokes, rich colours",
            "photograph",
        ),
        s(
            "neon night",
            ", at night, neon signs, wet streets, reflections",
            "daylight",
        ),
    ]
}

/// Keys in crop mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CropKey {
    Left,
    Right,
    Up,
    Down,
    Grow,
    Shrink,
    Aspect,
    Clear,
    Done,
}

/// Keys in the style picker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickKey {
    Next,
    Previous,
    Choose,
    Close,
}

/// Aspect presets for the crop, width:height (0:0 is free).
pub const ASPECTS: [(u32, u32); 6] = [(0, 0), (1, 1), (4, 3), (3, 4), (16, 9), (9, 16)];

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Queued,
    Loading,
    Running {
        step: usize,
        of: usize,
        seconds_per_step: f64,
    },
    Decoding,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: u64,
    pub state: JobState,
}

/// Keys typed in a text mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKey {
    Char(char),
    Backspace,
    Newline,
    Done,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Command(Command),
    Text(TextKey),
    /// The whole history (at start, or after an outside change).
    History(Vec<RunRecord>),
    /// A run was written (queued, progress of status, star...).
    RunChanged(Box<RunRecord>),
    JobLoading(u64),
    JobStep {
        id: u64,
        step: usize,
        of: usize,
        seconds: f64,
    },
    JobDecoding(u64),
    /// The job left the worker (done, failed or cancelled: its record says).
    JobEnded(u64),
    /// Records another process wrote (new runs, or runs it moved on).
    RunsChanged(Vec<RunRecord>),
    /// A message for the status line (errors from effects).
    Message(String),
    Crop(CropKey),
    Pick(PickKey),
    /// The size of the source the editor would use.
    SourceSize(u32, u32),
}

/// Work for the event loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Record these recipes as queued runs and hand them to the worker.
    Queue {
        recipes: Vec<Recipe>,
        source: SourceChoice,
        parent: Option<u64>,
    },
    /// Stop the running job after its current step.
    Cancel(u64),
    /// Take a queued job out of the queue (its record becomes cancelled).
    Dequeue(u64),
    /// The worker should take the jobs in this order next.
    Reorder(Vec<u64>),
    SetStar {
        id: u64,
        starred: bool,
    },
    Quit,
}

#[derive(Debug, Clone)]
pub struct State {
    /// Every run, ascending id.
    pub runs: Vec<RunRecord>,
    /// Indices into `runs` in display order (view and filter applied), with
    /// the depth of each in the lineage view.
    pub visible: Vec<(usize, usize)>,
    pub selected: usize,
    pub view: ViewMode,
    pub filter: String,
    pub editor: Editor,
    pub mode: Mode,
    /// The running job first, then the queued ones in order.
    pub jobs: Vec<Job>,
    /// A/B: false shows the selected run, true its comparison (the marked
    /// run, else its source).
    pub show_b: bool,
    pub marked: Option<u64>,
    pub message: String,
    /// A random draw for `Seed::Random`, refreshed by the loop per generate.
    pub next_random: u64,
    /// Pixel size of the editor's source (for the crop), once the loop knows it.
    pub source_size: Option<(u32, u32)>,
    pub styles: Vec<Style>,
    /// The model new runs use unless changed (the project's, or --model).
    pub default_model: String,
    /// Models found on this machine (as `atelier models` lists them), which
    /// `M` offers after the default and before the aliases; set by the loop.
    pub models: Vec<String>,
    /// Where new runs go and in what precision, as records name it (`cpu
    /// bf16`); set by the loop.
    pub device: String,
    /// Why this workstation cannot write the project ("pid N (command)
    /// writes it", a folder it may not write): it shows the runs as they
    /// come and changes nothing until it can.
    pub read_only: Option<String>,
}

impl State {
    pub fn new(runs: Vec<RunRecord>, model: String) -> Self {
        let mut s = State {
            runs: Vec::new(),
            visible: Vec::new(),
            selected: 0,
            view: ViewMode::Newest,
            filter: String::new(),
            editor: Editor::new(model.clone()),
            mode: Mode::Normal,
            jobs: Vec::new(),
            show_b: false,
            marked: None,
            message: String::new(),
            next_random: 0,
            source_size: None,
            styles: builtin_styles(),
            default_model: model.clone(),
            models: Vec::new(),
            device: String::new(),
            read_only: None,
        };
        update(&mut s, Action::History(runs));
        s
    }

    /// Jobs for the runs recorded as queued (by a workstation that quit or
    /// died, or a stopped sweep): they run next, oldest first.
    pub fn resume_queued(&mut self) {
        self.jobs = self
            .runs
            .iter()
            .filter(|r| r.status == Status::Queued)
            .map(|r| Job {
                id: r.id,
                state: JobState::Queued,
            })
            .collect();
    }

    pub fn selected_run(&self) -> Option<&RunRecord> {
        self.visible.get(self.selected).map(|&(i, _)| &self.runs[i])
    }

    pub fn run(&self, id: u64) -> Option<&RunRecord> {
        self.runs
            .binary_search_by_key(&id, |r| r.id)
            .ok()
            .map(|i| &self.runs[i])
    }

    fn run_mut(&mut self, id: u64) -> Option<&mut RunRecord> {
        let i = self.runs.binary_search_by_key(&id, |r| r.id).ok()?;
        Some(&mut self.runs[i])
    }

    /// The run shown as B: the marked one (when another is selected).
    pub fn b_run(&self) -> Option<&RunRecord> {
        let selected = self.selected_run()?.id;
        self.marked
            .filter(|&m| m != selected)
            .and_then(|m| self.run(m))
    }

    pub fn running(&self) -> Option<&Job> {
        self.jobs.first().filter(|j| j.state != JobState::Queued)
    }

    fn rebuild_visible(&mut self) {
        let keep_id = self.selected_run().map(|r| r.id);
        let needle = self.filter.to_lowercase();
        let matches =
            |r: &RunRecord| needle.is_empty() || r.recipe.prompt.to_lowercase().contains(&needle);
        let mut visible: Vec<(usize, usize)> = Vec::new();
        match self.view {
            ViewMode::Newest => {
                visible = (0..self.runs.len())
                    .rev()
                    .filter(|&i| matches(&self.runs[i]))
                    .map(|i| (i, 0))
                    .collect();
            }
            ViewMode::BySource => {
                let mut order: Vec<usize> = (0..self.runs.len())
                    .filter(|&i| matches(&self.runs[i]))
                    .collect();
                // Sources in order of their newest run; runs newest first within.
                let mut newest: std::collections::HashMap<&str, u64> =
                    std::collections::HashMap::new();
                for r in &self.runs {
                    let e = newest.entry(r.source.as_str()).or_default();
                    *e = (*e).max(r.id);
                }
                order.sort_by(|&a, &b| {
                    let (ra, rb) = (&self.runs[a], &self.runs[b]);
                    newest[rb.source.as_str()]
                        .cmp(&newest[ra.source.as_str()])
                        .then(rb.id.cmp(&ra.id))
                });
                visible = order.into_iter().map(|i| (i, 0)).collect();
            }
            ViewMode::Lineage => {
                // Roots newest first, children under their parent (depth-first).
                let index_of = |id: u64| self.runs.binary_search_by_key(&id, |r| r.id).ok();
                let parent_of = |r: &RunRecord| r.parent.or(r.source_run).and_then(index_of);
                let mut children: Vec<Vec<usize>> = vec![Vec::new(); self.runs.len()];
                let mut roots = Vec::new();
                for (i, r) in self.runs.iter().enumerate() {
                    match parent_of(r) {
                        Some(p) if p != i => children[p].push(i),
                        _ => roots.push(i),
                    }
                }
                let mut stack: Vec<(usize, usize)> = roots.into_iter().map(|i| (i, 0)).collect();
                while let Some((i, depth)) = stack.pop() {
                    if matches(&self.runs[i]) {
                        visible.push((i, depth));
                    }
                    for &c in children[i].iter().rev() {
                        stack.push((c, depth + 1));
                    }
                }
            }
        }
        self.visible = visible;
        self.selected = keep_id
            .and_then(|id| {
                self.visible
                    .iter()
                    .position(|&(i, _)| self.runs[i].id == id)
            })
            .unwrap_or(0)
            .min(self.visible.len().saturating_sub(1));
    }

    fn upsert(&mut self, record: RunRecord) {
        match self.runs.binary_search_by_key(&record.id, |r| r.id) {
            Ok(i) => self.runs[i] = record,
            Err(i) => self.runs.insert(i, record),
        }
    }
}

/// Size presets; (0, 0) is the source's own size.
pub const SIZES: [(u32, u32); 6] = [
    (0, 0),
    (512, 512),
    (768, 512),
    (512, 768),
    (768, 768),
    (1024, 1024),
];

const SCHEDULERS: [&str; 7] = [
    "",
    "ddim",
    "euler",
    "euler_a",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "pndm",
];

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Applies an action; returns what the loop must do.
pub fn update(s: &mut State, action: Action) -> Vec<Effect> {
    let mut effects = Vec::new();
    match action {
        Action::History(runs) => {
            s.runs = runs;
            s.runs.sort_by_key(|r| r.id);
            s.rebuild_visible();
        }
        Action::RunChanged(record) => {
            s.upsert(*record);
            s.rebuild_visible();
        }
        Action::RunsChanged(records) => {
            for record in records {
                s.upsert(record);
            }
            s.rebuild_visible();
        }
        Action::JobLoading(id) => set_job(s, id, JobState::Loading),
        Action::JobStep {
            id,
            step,
            of,
            seconds,
        } => {
            mark_running(s, id);
            set_job(
                s,
                id,
                JobState::Running {
                    step,
                    of,
                    seconds_per_step: seconds,
                },
            )
        }
        Action::JobDecoding(id) => set_job(s, id, JobState::Decoding),
        Action::JobEnded(id) => {
            s.jobs.retain(|j| j.id != id);
            if let Some(r) = s.run(id) {
                s.message = match r.status {
                    Status::Done => format!("#{id} done"),
                    Status::Cancelled => format!("#{id} cancelled"),
                    Status::Failed => {
                        format!("#{id} failed: {}", r.error.clone().unwrap_or_default())
                    }
                    _ => String::new(),
                };
            }
        }
        Action::Message(m) => s.message = m,
        Action::Text(key) => text_input(s, key),
        Action::Crop(key) => crop_input(s, key),
        Action::Pick(key) => pick_input(s, key),
        Action::SourceSize(w, h) => s.source_size = Some((w, h)),
        Action::Command(c) => command(s, c, &mut effects),
    }
    effects
}

/// The worker writes a queued record as running before its first step;
/// the history shows it so too, without reading the record again.
fn mark_running(s: &mut State, id: u64) {
    if let Some(r) = s.run_mut(id) {
        if r.status == Status::Queued {
            r.status = Status::Running;
        }
    }
}

fn set_job(s: &mut State, id: u64, state: JobState) {
    match s.jobs.iter_mut().find(|j| j.id == id) {
        Some(job) => job.state = state,
        None => s.jobs.insert(0, Job { id, state }),
    }
    // The running job leads the list.
    if let Some(pos) = s.jobs.iter().position(|j| j.id == id) {
        let job = s.jobs.remove(pos);
        s.jobs.insert(0, job);
    }
}

fn text_input(s: &mut State, key: TextKey) {
    let target = match s.mode {
        Mode::Edit(TextField::Prompt) => &mut s.editor.prompt,
        Mode::Edit(TextField::Negative) => &mut s.editor.negative,
        Mode::Filter => &mut s.filter,
        _ => return,
    };
    match key {
        TextKey::Char(c) => target.push(c),
        TextKey::Backspace => {
            target.pop();
        }
        TextKey::Newline if matches!(s.mode, Mode::Edit(_)) => target.push('\n'),
        TextKey::Newline | TextKey::Done => s.mode = Mode::Normal,
    }
    if s.mode == Mode::Filter || key == TextKey::Done {
        s.rebuild_visible();
    }
}

fn pick_input(s: &mut State, key: PickKey) {
    let Mode::Styles(i) = s.mode else { return };
    let n = s.styles.len().max(1);
    match key {
        PickKey::Next => s.mode = Mode::Styles((i + 1) % n),
        PickKey::Previous => s.mode = Mode::Styles((i + n - 1) % n),
        PickKey::Close => s.mode = Mode::Normal,
        PickKey::Choose => {
            if let Some(style) = s.styles.get(i).cloned() {
                s.editor.prompt.push_str(&style.prompt);
                if !style.negative.is_empty() {
                    if !s.editor.negative.is_empty() {
                        s.editor.negative.push_str(", ");
                    }
                    s.editor
                        .negative
                        .push_str(style.negative.trim_start_matches(", "));
                }
                s.message = format!("style {:?} inserted", style.name);
            }
            s.mode = Mode::Normal;
        }
    }
}

/// Moves, resizes or reshapes the crop, kept inside the source.
fn crop_input(s: &mut State, key: CropKey) {
    let Some((sw, sh)) = s.source_size else {
        s.mode = Mode::Normal;
        return;
    };
    let e = &mut s.editor;
    if key == CropKey::Done {
        s.mode = Mode::Normal;
        return;
    }
    if key == CropKey::Clear {
        e.crop = None;
        return;
    }
    let mut c = e.crop.unwrap_or(crate::engine::CropRect {
        x: 0,
        y: 0,
        w: sw,
        h: sh,
    });
    let step_x = (sw / 20).max(1) as i64;
    let step_y = (sh / 20).max(1) as i64;
    let (mut x, mut y, mut w, mut h) = (c.x as i64, c.y as i64, c.w as i64, c.h as i64);
    match key {
        CropKey::Left => x -= step_x,
        CropKey::Right => x += step_x,
        CropKey::Up => y -= step_y,
        CropKey::Down => y += step_y,
        CropKey::Grow => {
            w += 2 * step_x;
            h += 2 * step_y;
            x -= step_x;
            y -= step_y;
        }
        CropKey::Shrink => {
            w -= 2 * step_x;
            h -= 2 * step_y;
            x += step_x;
            y += step_y;
        }
        CropKey::Aspect => e.aspect = (e.aspect + 1) % ASPECTS.len(),
        CropKey::Clear | CropKey::Done => {}
    }
    // Apply the aspect preset around the centre.
    let (aw, ah) = ASPECTS[e.aspect];
    if aw > 0 {
        let (cx, cy) = (x + w / 2, y + h / 2);
        let area = (w * h).max(64);
        w = ((area as f64 * aw as f64 / ah as f64).sqrt()) as i64;
        h = w * ah as i64 / aw as i64;
        let fit = (sw as f64 / w as f64).min(sh as f64 / h as f64).min(1.0);
        w = (w as f64 * fit) as i64;
        h = (h as f64 * fit) as i64;
        x = cx - w / 2;
        y = cy - h / 2;
    }
    w = w.clamp(8, sw as i64);
    h = h.clamp(8, sh as i64);
    x = x.clamp(0, sw as i64 - w);
    y = y.clamp(0, sh as i64 - h);
    c = crate::engine::CropRect {
        x: x as u32,
        y: y as u32,
        w: w as u32,
        h: h as u32,
    };
    e.crop = Some(c);
}

fn command(s: &mut State, c: Command, effects: &mut Vec<Effect>) {
    // Overlays take the next key.
    match s.mode {
        Mode::Help(offset) => {
            // Moving scrolls it (where it does not fit); any other key closes it.
            s.mode = match c {
                Command::MoveDown => Mode::Help((offset + 1).min(Command::ALL.len())),
                Command::MoveUp => Mode::Help(offset.saturating_sub(1)),
                _ => Mode::Normal,
            };
            return;
        }
        Mode::ConfirmQuit => {
            s.mode = Mode::Normal;
            if c == Command::Quit {
                effects.push(Effect::Quit);
            } else {
                s.message = "still here".into();
            }
            return;
        }
        _ => {}
    }
    let e = &mut s.editor;
    match c {
        Command::MoveDown => s.selected = (s.selected + 1).min(s.visible.len().saturating_sub(1)),
        Command::MoveUp => s.selected = s.selected.saturating_sub(1),
        Command::Top => s.selected = 0,
        Command::Bottom => s.selected = s.visible.len().saturating_sub(1),
        Command::Help => s.mode = Mode::Help(0),
        Command::Quit => {
            if s.jobs.is_empty() {
                effects.push(Effect::Quit);
            } else {
                s.mode = Mode::ConfirmQuit;
            }
        }
        Command::Filter => s.mode = Mode::Filter,
        Command::Crop => {
            if s.source_size.is_some() {
                s.mode = Mode::Crop;
            } else {
                s.message = "no source to crop yet".into();
            }
        }
        Command::Styles => s.mode = Mode::Styles(0),
        Command::EditPrompt => s.mode = Mode::Edit(TextField::Prompt),
        Command::EditNegative => s.mode = Mode::Edit(TextField::Negative),
        Command::StrengthDown => e.strength = round2((e.strength - 0.05).max(0.0)),
        Command::StrengthUp => e.strength = round2((e.strength + 0.05).min(1.0)),
        Command::StrengthDownFine => e.strength = round2((e.strength - 0.01).max(0.0)),
        Command::StrengthUpFine => e.strength = round2((e.strength + 0.01).min(1.0)),
        Command::StepsDown => e.steps = e.steps.saturating_sub(1).max(1),
        Command::StepsUp => e.steps = (e.steps + 1).min(1000),
        Command::GuidanceDown => e.guidance = (e.guidance - 0.5).max(0.0),
        Command::GuidanceUp => e.guidance = (e.guidance + 0.5).min(30.0),
        Command::SeedMode => {
            e.seed = match e.seed {
                Seed::Random => Seed::Fixed(s.next_random),
                Seed::Fixed(_) => Seed::Random,
            }
        }
        Command::SeedNext => {
            e.seed = match e.seed {
                Seed::Fixed(x) => Seed::Fixed(x.wrapping_add(1)),
                Seed::Random => Seed::Fixed(s.next_random),
            }
        }
        Command::CountDown => e.count = e.count.saturating_sub(1).max(1),
        Command::CountUp => e.count = (e.count + 1).min(16),
        Command::NextScheduler => {
            let i = SCHEDULERS
                .iter()
                .position(|n| *n == e.scheduler)
                .unwrap_or(0);
            e.scheduler = SCHEDULERS[(i + 1) % SCHEDULERS.len()].to_string();
        }
        Command::NextSize => {
            let i = SIZES
                .iter()
                .position(|&wh| wh == (e.width, e.height))
                .map(|i| i + 1)
                .unwrap_or(0);
            (e.width, e.height) = SIZES[i % SIZES.len()];
        }
        Command::NextModel => {
            let mut models: Vec<String> = vec![s.default_model.clone()];
            let aliases = crate::models::ALIASES
                .iter()
                .map(|(alias, _)| alias.to_string());
            for model in s.models.iter().cloned().chain(aliases) {
                if !models.contains(&model) {
                    models.push(model);
                }
            }
            let i = models
                .iter()
                .position(|m| *m == e.model)
                .map(|i| i + 1)
                .unwrap_or(0);
            let next = models[i % models.len()].clone();
            // Settings still at the old model's recommendation follow the new
            // model's (turbo models want a few steps and no guidance).
            let recommended = crate::models::recommended_steps_guidance;
            if (e.steps, e.guidance) == recommended(&e.model) {
                (e.steps, e.guidance) = recommended(&next);
            }
            e.model = next;
        }
        Command::NextFit => {
            e.fit = match e.fit {
                Fit::Crop => Fit::Pad,
                Fit::Pad => Fit::Stretch,
                Fit::Stretch => Fit::Crop,
            }
        }
        Command::Recall => {
            if let Some(r) = s.selected_run().cloned() {
                let e = &mut s.editor;
                e.prompt = r.recipe.prompt.clone();
                e.negative = r.recipe.negative.clone();
                e.strength = r.recipe.strength;
                e.steps = r.recipe.steps;
                e.guidance = r.recipe.guidance;
                e.seed = Seed::Fixed(r.recipe.seed);
                e.scheduler = r.recipe.scheduler.clone();
                e.width = r.recipe.width;
                e.height = r.recipe.height;
                e.fit = r.recipe.fit;
                e.crop = r.recipe.crop;
                e.model = r.recipe.model.clone();
                e.source = Some(SourceChoice {
                    hash: r.source.clone(),
                    run: r.source_run,
                });
                e.parent = Some(r.id);
                s.message = format!("recalled {}", r.label());
            }
        }
        Command::UseAsSource => match s.selected_run() {
            Some(r) if r.status.has_image() => {
                let id = r.id;
                s.editor.source = Some(SourceChoice {
                    hash: String::new(),
                    run: Some(id),
                });
                s.editor.parent = Some(id);
                // Keep the size of the chain's output.
                s.message = format!("source: the output of #{id}");
            }
            Some(r) => s.message = format!("{} has no output to use", r.label()),
            None => {}
        },
        Command::Generate => {
            let Some(source) = s.editor.source.clone().or_else(|| {
                s.selected_run().map(|r| SourceChoice {
                    hash: r.source.clone(),
                    run: r.source_run,
                })
            }) else {
                s.message =
                    "no source yet: add one with `atelier gen --source FILE` or recall a run"
                        .into();
                return;
            };
            if s.editor.prompt.trim().is_empty() {
                s.message = "the prompt is empty: press e to write one".into();
                return;
            }
            if s.editor.steps_run() == 0 {
                s.message = "no step would run: raise strength or steps".into();
                return;
            }
            let recipes = (0..s.editor.count)
                .map(|i| s.editor.recipe(i, s.next_random))
                .collect();
            effects.push(Effect::Queue {
                recipes,
                source,
                parent: s.editor.parent,
            });
            s.message = format!("queued {}", s.editor.count);
        }
        Command::Cancel => match s.running() {
            Some(job) => effects.push(Effect::Cancel(job.id)),
            None => s.message = "nothing is running".into(),
        },
        Command::RemoveQueued => {
            if let Some(pos) = s.jobs.iter().rposition(|j| j.state == JobState::Queued) {
                let job = s.jobs.remove(pos);
                effects.push(Effect::Dequeue(job.id));
            }
        }
        Command::PromoteQueued => {
            let first_queued = s.jobs.iter().position(|j| j.state == JobState::Queued);
            if let (Some(first), Some(last)) = (
                first_queued,
                s.jobs.iter().rposition(|j| j.state == JobState::Queued),
            ) {
                if first != last {
                    let job = s.jobs.remove(last);
                    s.jobs.insert(first, job);
                    effects.push(Effect::Reorder(
                        s.jobs
                            .iter()
                            .filter(|j| j.state == JobState::Queued)
                            .map(|j| j.id)
                            .collect(),
                    ));
                }
            }
        }
        Command::Star => {
            if let Some(r) = s.selected_run() {
                effects.push(Effect::SetStar {
                    id: r.id,
                    starred: !r.starred,
                });
            }
        }
        Command::ToggleAb => s.show_b = !s.show_b,
        Command::Mark => {
            let id = s.selected_run().map(|r| r.id);
            s.marked = if s.marked == id { None } else { id };
            if let Some(id) = s.marked {
                s.message = format!("marked #{id}: select another run and press tab to compare");
            }
        }
        Command::NextView => {
            s.view = match s.view {
                ViewMode::Newest => ViewMode::BySource,
                ViewMode::BySource => ViewMode::Lineage,
                ViewMode::Lineage => ViewMode::Newest,
            };
            s.rebuild_visible();
        }
    }
}

/// The settings in which two recipes differ (for highlighting).
pub fn differing_fields(a: &Recipe, b: &Recipe) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            out.push(name);
        }
    };
    check("prompt", a.prompt != b.prompt);
    check("negative", a.negative != b.negative);
    check("strength", a.strength != b.strength);
    check("steps", a.steps != b.steps);
    check("guidance", a.guidance != b.guidance);
    check("seed", a.seed != b.seed);
    check("scheduler", a.scheduler != b.scheduler);
    check("size", (a.width, a.height) != (b.width, b.height));
    check("fit", a.fit != b.fit);
    check("crop", a.crop != b.crop);
    check("model", a.model != b.model);
    out
}

/// A scheduler's display name.
pub fn scheduler_label(name: &str) -> String {
    if name.is_empty() {
        return "model's own".into();
    }
    name.parse::<SchedulerKind>()
        .map(|k| k.a1111_name().to_string())
        .unwrap_or_else(|_| name.to_string())
}

#[cfg(test)]
mod tests;
