//! Whole screens of the workstation, drawn on ratatui's TestBackend with the
//! half-blocks picker, compared with the snapshots in tests/snapshots/.

mod common;

use atelier::engine::Fit;
use atelier::project::{ModelRef, RunRecord, Status};
use atelier::recipe::Recipe;
use atelier::tui::images::ImageSlot;
use atelier::tui::keymap::{Command, Keymap};
use atelier::tui::state::{update, Action, Job, JobState, State, TextKey};
use atelier::tui::theme::Theme;
use atelier::tui::view;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use ratatui_image::picker::Picker;

fn record(id: u64, prompt: &str, strength: f64, parent: Option<u64>, status: Status) -> RunRecord {
    RunRecord {
        id,
        created: format!("2026-11-27T10:{:02}:00Z", id),
        status,
        error: None,
        parent,
        source: format!("{:064x}", 7 + id % 2),
        source_run: None,
        steps_run: Some(6),
        device: "cpu".into(),
        starred: id == 2,
        tags: vec![],
        note: String::new(),
        recipe: Recipe {
            prompt: prompt.into(),
            negative: "blurry".into(),
            strength,
            steps: 12,
            guidance: 7.5,
            seed: id * 100,
            scheduler: "euler".into(),
            width: 128,
            height: 128,
            crop: None,
            fit: Fit::Crop,
            model: "sd-turbo".into(),
        },
        model: ModelRef::default(),
        timings: None,
    }
}

fn state() -> State {
    let mut s = State::new(
        vec![
            record(
                1,
                "a red fox in the snow, oil painting",
                0.6,
                None,
                Status::Done,
            ),
            record(2, "a castle on a hill at dawn", 0.45, None, Status::Done),
            record(
                3,
                "a red fox in the snow, oil painting, at dusk",
                0.6,
                Some(1),
                Status::Done,
            ),
            record(
                4,
                "a red fox in the snow, neon",
                0.75,
                Some(3),
                Status::Failed,
            ),
        ],
        "sd-turbo".into(),
    );
    s.device = "cpu f32".into();
    s
}

/// A thumbnail for every run with an image: a colour ramp by id.
fn thumbs(s: &State) -> atelier::tui::images::Thumbs {
    s.runs
        .iter()
        .filter(|r| r.status.has_image())
        .map(|r| {
            (
                r.id,
                image::RgbImage::from_fn(6, 4, |x, y| {
                    image::Rgb([(r.id * 40) as u8, (x * 40) as u8, (y * 60) as u8])
                }),
            )
        })
        .collect()
}

fn screen(s: &State, width: u16, height: u16, with_image: bool) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    let theme = Theme::load("dark", None).unwrap();
    let keymap = Keymap::default();
    let mut slot = with_image.then(|| {
        let img = image::open(common::sd15_case().join("source.png")).unwrap();
        ImageSlot::inline(Picker::halfblocks().new_resize_protocol(img))
    });
    terminal
        .draw(|f| view::draw(f, s, &theme, &keymap, slot.as_mut(), Some(&thumbs(s))))
        .unwrap();
    terminal.backend().to_string()
}

#[test]
fn main_screen() {
    let mut s = state();
    update(&mut s, Action::Command(Command::MoveDown));
    update(&mut s, Action::Command(Command::Recall));
    update(&mut s, Action::Command(Command::StrengthUp));
    insta::assert_snapshot!(screen(&s, 140, 30, true));
}

#[test]
fn running_queue_with_progress() {
    let mut s = state();
    s.jobs = vec![
        Job {
            id: 5,
            state: JobState::Queued,
        },
        Job {
            id: 6,
            state: JobState::Queued,
        },
    ];
    update(
        &mut s,
        Action::JobStep {
            id: 5,
            step: 3,
            of: 9,
            seconds: 0.42,
        },
    );
    insta::assert_snapshot!(screen(&s, 120, 24, false));
}

#[test]
fn help_overlay() {
    let mut s = state();
    update(&mut s, Action::Command(Command::Help));
    insta::assert_snapshot!(screen(&s, 100, 44, false));
}

#[test]
fn tiny_terminal() {
    let mut s = state();
    update(&mut s, Action::Command(Command::NextView));
    update(&mut s, Action::Command(Command::NextView));
    insta::assert_snapshot!(screen(&s, 60, 20, true));
}

#[test]
fn classic_terminal_shows_the_preview_beside_the_history() {
    let mut s = state();
    update(&mut s, Action::Command(Command::MoveDown));
    insta::assert_snapshot!(screen(&s, 80, 24, true));
}

#[test]
fn every_setting_shows_on_small_terminals() {
    let mut s = state();
    // Typing a four-line prompt is the tallest the recipe gets outside cropping.
    update(&mut s, Action::Command(Command::EditPrompt));
    for c in "one\ntwo\nthree\nfour".chars() {
        let key = match c {
            '\n' => TextKey::Newline,
            c => TextKey::Char(c),
        };
        update(&mut s, Action::Text(key));
    }
    for (w, h) in [(60, 20), (80, 24), (99, 30)] {
        let text = screen(&s, w, h, true);
        for name in [
            "strength",
            "steps",
            "guidance",
            "seed",
            "count",
            "scheduler",
            "size",
            "crop",
            "model",
            "device",
            "source",
            "parent",
            "four",
        ] {
            assert!(text.contains(name), "{name} missing at {w}x{h}:\n{text}");
        }
    }
}

#[test]
fn the_size_row_says_what_the_sources_size_comes_to() {
    let mut s = state();
    update(&mut s, Action::SourceSize(517, 389));
    assert!(screen(&s, 140, 30, false).contains("source's 512x384"));
    // A phone photo at its own size is over the limit: the row says so.
    update(&mut s, Action::SourceSize(4032, 3024));
    assert!(screen(&s, 140, 30, false).contains("source's: too large, z"));
}

#[test]
fn compare_two_runs() {
    let mut s = state();
    update(&mut s, Action::Command(Command::Mark));
    update(&mut s, Action::Command(Command::Bottom));
    update(&mut s, Action::Command(Command::ToggleAb));
    insta::assert_snapshot!(screen(&s, 120, 26, true));
}

#[test]
fn empty_project_and_monochrome() {
    let s = State::new(vec![], "sd-turbo".into());
    let mut terminal = Terminal::new(TestBackend::new(100, 20)).unwrap();
    let theme = Theme::monochrome();
    terminal
        .draw(|f| view::draw(f, &s, &theme, &Keymap::default(), None, None))
        .unwrap();
    // No colour anywhere on the screen.
    let buffer = terminal.backend().buffer();
    assert!(buffer
        .content
        .iter()
        .all(|c| c.fg == ratatui::style::Color::Reset && c.bg == ratatui::style::Color::Reset));
    insta::assert_snapshot!(terminal.backend().to_string());
}

#[test]
fn every_size_down_to_tiny_draws() {
    let s = state();
    for (w, h) in [
        (20, 6),
        (40, 10),
        (60, 20),
        (80, 24),
        (99, 30),
        (100, 16),
        (200, 60),
    ] {
        screen(&s, w, h, true);
    }
}

#[test]
fn crop_mode_and_styles_picker() {
    use atelier::tui::state::{CropKey, PickKey};
    let mut s = state();
    update(&mut s, Action::SourceSize(512, 256));
    update(&mut s, Action::Command(Command::Crop));
    update(&mut s, Action::Crop(CropKey::Shrink));
    update(&mut s, Action::Crop(CropKey::Shrink));
    update(&mut s, Action::Crop(CropKey::Right));
    insta::assert_snapshot!("crop_mode", screen(&s, 120, 36, true));
    update(&mut s, Action::Crop(CropKey::Done));
    update(&mut s, Action::Command(Command::Styles));
    update(&mut s, Action::Pick(PickKey::Next));
    insta::assert_snapshot!("styles_picker", screen(&s, 120, 30, false));
}

#[test]
fn help_scrolls_where_it_does_not_fit() {
    let mut s = state();
    update(&mut s, Action::Command(Command::Help));
    let top = screen(&s, 60, 20, false);
    assert!(
        top.contains("j/k scroll") && top.contains("next run"),
        "{top}"
    );
    assert!(
        !top.contains("move the last queued job to the front"),
        "{top}"
    );
    for _ in 0..60 {
        update(&mut s, Action::Command(Command::MoveDown));
    }
    let bottom = screen(&s, 60, 20, false);
    assert!(
        bottom.contains("move the last queued job to the front"),
        "{bottom}"
    );
    update(&mut s, Action::Command(Command::Star));
    assert_eq!(
        s.mode,
        atelier::tui::state::Mode::Normal,
        "any other key closes it"
    );
}

#[test]
fn help_in_two_columns_on_a_short_terminal() {
    let mut s = state();
    update(&mut s, Action::Command(Command::Help));
    insta::assert_snapshot!(screen(&s, 150, 26, false));
}
