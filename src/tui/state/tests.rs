//! Behaviour of the workstation without a terminal: actions in, effects out.

use super::*;
use crate::engine::Fit;
use crate::project::{ModelRef, RunRecord, Status};
use crate::recipe::Recipe;

pub(crate) fn run(id: u64, prompt: &str, parent: Option<u64>, status: Status) -> RunRecord {
    RunRecord {
        id,
        created: format!("2026-11-27T10:{:02}:00Z", id % 60),
        status,
        error: None,
        parent,
        source: format!("{:064x}", id % 2),
        source_run: None,
        steps_run: Some(6),
        device: "cpu".into(),
        starred: false,
        tags: vec![],
        note: String::new(),
        recipe: Recipe {
            prompt: prompt.into(),
            negative: String::new(),
            strength: 0.5,
            steps: 12,
            guidance: 7.5,
            seed: id * 10,
            scheduler: "ddim".into(),
            width: 128,
            height: 128,
            crop: None,
            fit: Fit::Crop,
            model: "m".into(),
        },
        model: ModelRef::default(),
        timings: None,
    }
}

fn state() -> State {
    State::new(
        vec![
            run(1, "a red fox", None, Status::Done),
            run(2, "a castle", None, Status::Done),
            run(3, "a red fox at dusk", Some(1), Status::Done),
        ],
        "m".into(),
    )
}

fn cmd(s: &mut State, c: Command) -> Vec<Effect> {
    update(s, Action::Command(c))
}

fn type_text(s: &mut State, text: &str) {
    for c in text.chars() {
        update(s, Action::Text(TextKey::Char(c)));
    }
}

#[test]
fn history_is_newest_first_and_moves_with_the_keys() {
    let mut s = state();
    assert_eq!(s.selected_run().unwrap().id, 3);
    cmd(&mut s, Command::MoveDown);
    cmd(&mut s, Command::MoveDown);
    cmd(&mut s, Command::MoveDown);
    assert_eq!(s.selected_run().unwrap().id, 1, "stops at the end");
    cmd(&mut s, Command::MoveUp);
    assert_eq!(s.selected_run().unwrap().id, 2);
    cmd(&mut s, Command::Top);
    assert_eq!(s.selected_run().unwrap().id, 3);
}

#[test]
fn filter_narrows_by_prompt_text() {
    let mut s = state();
    cmd(&mut s, Command::Filter);
    type_text(&mut s, "FOX");
    assert_eq!(s.visible.len(), 2);
    update(&mut s, Action::Text(TextKey::Done));
    assert_eq!(s.mode, Mode::Normal);
    assert!(s.selected_run().unwrap().recipe.prompt.contains("fox"));
}

#[test]
fn views_group_by_source_and_show_the_lineage_tree() {
    let mut s = state();
    cmd(&mut s, Command::NextView);
    assert_eq!(s.view, ViewMode::BySource);
    let ids: Vec<u64> = s.visible.iter().map(|&(i, _)| s.runs[i].id).collect();
    assert_eq!(ids, vec![3, 1, 2], "runs of the newest source first");
    cmd(&mut s, Command::NextView);
    let tree: Vec<(u64, usize)> = s.visible.iter().map(|&(i, d)| (s.runs[i].id, d)).collect();
    assert_eq!(tree, vec![(2, 0), (1, 0), (3, 1)], "#3 under its parent #1");
}

#[test]
fn strength_moves_by_coarse_and_fine_steps_within_bounds_and_shows_steps_run() {
    let mut s = state();
    assert_eq!(s.editor.strength, 0.6);
    cmd(&mut s, Command::StrengthUp);
    assert_eq!(s.editor.strength, 0.65);
    cmd(&mut s, Command::StrengthDownFine);
    assert_eq!(s.editor.strength, 0.64);
    assert_eq!(s.editor.steps_run(), 19, "int(30 * 0.64)");
    for _ in 0..30 {
        cmd(&mut s, Command::StrengthUp);
    }
    assert_eq!(s.editor.strength, 1.0);
    for _ in 0..30 {
        cmd(&mut s, Command::StrengthDown);
    }
    assert_eq!(s.editor.strength, 0.0);
    assert_eq!(s.editor.steps_run(), 0);
}

#[test]
fn recall_then_generate_records_the_parent_and_queues_the_recipe() {
    let mut s = state();
    cmd(&mut s, Command::MoveDown); // #2
    cmd(&mut s, Command::Recall);
    assert_eq!(s.editor.prompt, "a castle");
    assert_eq!(s.editor.seed, Seed::Fixed(20));
    assert_eq!(s.editor.parent, Some(2));
    cmd(&mut s, Command::StrengthDown);
    let effects = cmd(&mut s, Command::Generate);
    match &effects[..] {
        [Effect::Queue {
            recipes,
            source,
            parent,
        }] => {
            assert_eq!(recipes.len(), 1);
            assert_eq!(recipes[0].strength, 0.45);
            assert_eq!(recipes[0].seed, 20);
            assert_eq!(*parent, Some(2));
            assert_eq!(source.hash, format!("{:064x}", 0));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn variations_get_consecutive_seeds() {
    let mut s = state();
    cmd(&mut s, Command::Recall);
    cmd(&mut s, Command::CountUp);
    cmd(&mut s, Command::CountUp);
    let effects = cmd(&mut s, Command::Generate);
    let Effect::Queue { recipes, .. } = &effects[0] else {
        panic!()
    };
    assert_eq!(
        recipes.iter().map(|r| r.seed).collect::<Vec<_>>(),
        vec![30, 31, 32]
    );
}

#[test]
fn generate_explains_what_is_missing() {
    let mut s = State::new(vec![], "m".into());
    assert!(cmd(&mut s, Command::Generate).is_empty());
    assert!(s.message.contains("no source"));
    let mut s = state();
    assert!(cmd(&mut s, Command::Generate).is_empty());
    assert!(s.message.contains("prompt is empty"));
}

#[test]
fn the_prompt_editor_takes_lines_and_keys_do_not_leak_into_commands() {
    let mut s = state();
    cmd(&mut s, Command::EditPrompt);
    type_text(&mut s, "gqx[");
    update(&mut s, Action::Text(TextKey::Newline));
    type_text(&mut s, "second");
    update(&mut s, Action::Text(TextKey::Backspace));
    update(&mut s, Action::Text(TextKey::Done));
    assert_eq!(s.editor.prompt, "gqx[\nsecon");
    assert_eq!(s.editor.strength, 0.6);
    assert_eq!(s.mode, Mode::Normal);
}

#[test]
fn progress_cancel_and_the_queue() {
    let mut s = state();
    for id in 4..=6 {
        update(
            &mut s,
            Action::RunChanged(Box::new(run(id, "q", None, Status::Queued))),
        );
    }
    s.jobs = vec![
        Job {
            id: 4,
            state: JobState::Queued,
        },
        Job {
            id: 5,
            state: JobState::Queued,
        },
        Job {
            id: 6,
            state: JobState::Queued,
        },
    ];
    assert!(cmd(&mut s, Command::Cancel).is_empty(), "nothing runs yet");
    update(
        &mut s,
        Action::JobStep {
            id: 4,
            step: 2,
            of: 10,
            seconds: 0.5,
        },
    );
    assert_eq!(s.running().unwrap().id, 4);
    assert_eq!(
        s.run(4).unwrap().status,
        Status::Running,
        "the history row too"
    );
    assert_eq!(s.run(5).unwrap().status, Status::Queued);
    assert_eq!(cmd(&mut s, Command::Cancel), vec![Effect::Cancel(4)]);
    assert_eq!(
        cmd(&mut s, Command::PromoteQueued),
        vec![Effect::Reorder(vec![6, 5])]
    );
    assert_eq!(cmd(&mut s, Command::RemoveQueued), vec![Effect::Dequeue(5)]);
    update(
        &mut s,
        Action::RunChanged(Box::new(run(4, "x", None, Status::Cancelled))),
    );
    update(&mut s, Action::JobEnded(4));
    assert_eq!(s.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![6]);
    assert!(s.message.contains("#4 cancelled"));
}

#[test]
fn quit_asks_while_jobs_run() {
    let mut s = state();
    s.jobs = vec![Job {
        id: 4,
        state: JobState::Loading,
    }];
    assert!(cmd(&mut s, Command::Quit).is_empty());
    assert_eq!(s.mode, Mode::ConfirmQuit);
    assert!(cmd(&mut s, Command::Help).is_empty(), "another key stays");
    assert_eq!(s.mode, Mode::Normal);
    cmd(&mut s, Command::Quit);
    assert_eq!(cmd(&mut s, Command::Quit), vec![Effect::Quit]);
    let mut idle = state();
    assert_eq!(cmd(&mut idle, Command::Quit), vec![Effect::Quit]);
}

#[test]
fn ab_compares_with_the_marked_run_and_names_the_differences() {
    let mut s = state();
    cmd(&mut s, Command::Mark); // #3
    cmd(&mut s, Command::MoveDown);
    cmd(&mut s, Command::MoveDown); // #1
    assert_eq!(s.b_run().unwrap().id, 3);
    cmd(&mut s, Command::ToggleAb);
    assert!(s.show_b);
    let a = &s.selected_run().unwrap().recipe;
    let b = &s.b_run().unwrap().recipe;
    assert_eq!(differing_fields(a, b), vec!["prompt", "seed"]);
}

#[test]
fn star_and_use_as_source() {
    let mut s = state();
    assert_eq!(
        cmd(&mut s, Command::Star),
        vec![Effect::SetStar {
            id: 3,
            starred: true
        }]
    );
    cmd(&mut s, Command::UseAsSource);
    assert_eq!(
        s.editor.source,
        Some(SourceChoice {
            hash: String::new(),
            run: Some(3)
        })
    );
    assert_eq!(s.editor.parent, Some(3));
}

#[test]
fn help_opens_and_any_key_closes_it() {
    let mut s = state();
    cmd(&mut s, Command::Help);
    assert_eq!(s.mode, Mode::Help(0));
    assert!(
        cmd(&mut s, Command::Generate).is_empty(),
        "the key only closes help"
    );
    assert_eq!(s.mode, Mode::Normal);
}

#[test]
fn crop_moves_and_resizes_inside_the_source_and_keeps_an_aspect() {
    let mut s = state();
    assert!(cmd(&mut s, Command::Crop).is_empty());
    assert_eq!(s.mode, Mode::Normal, "no source size known yet");
    update(&mut s, Action::SourceSize(400, 200));
    cmd(&mut s, Command::Crop);
    assert_eq!(s.mode, Mode::Crop);
    update(&mut s, Action::Crop(CropKey::Shrink));
    let c = s.editor.crop.unwrap();
    assert_eq!((c.x, c.y, c.w, c.h), (20, 10, 360, 180));
    for _ in 0..10 {
        update(&mut s, Action::Crop(CropKey::Left));
    }
    assert_eq!(s.editor.crop.unwrap().x, 0, "stops at the edge");
    update(&mut s, Action::Crop(CropKey::Aspect)); // 1:1
    let c = s.editor.crop.unwrap();
    assert_eq!(c.w, c.h);
    assert!(c.x + c.w <= 400 && c.y + c.h <= 200);
    update(&mut s, Action::Crop(CropKey::Done));
    assert_eq!(s.mode, Mode::Normal);
    // The crop goes into the recipe.
    cmd(&mut s, Command::EditPrompt);
    type_text(&mut s, "x");
    update(&mut s, Action::Text(TextKey::Done));
    let effects = cmd(&mut s, Command::Generate);
    let Effect::Queue { recipes, .. } = &effects[0] else {
        panic!()
    };
    assert_eq!(recipes[0].crop, s.editor.crop);
    cmd(&mut s, Command::Crop);
    update(&mut s, Action::Crop(CropKey::Clear));
    assert_eq!(s.editor.crop, None);
}

#[test]
fn styles_append_to_the_prompts() {
    let mut s = state();
    s.editor.prompt = "a fox".into();
    cmd(&mut s, Command::Styles);
    assert_eq!(s.mode, Mode::Styles(0));
    update(&mut s, Action::Pick(PickKey::Next));
    update(&mut s, Action::Pick(PickKey::Choose));
    let style = &s.styles[1];
    assert_eq!(s.editor.prompt, format!("a fox{}", style.prompt));
    assert_eq!(s.editor.negative, style.negative);
    assert_eq!(s.mode, Mode::Normal);
}

#[test]
fn size_and_model_presets_cycle() {
    let mut s = state();
    cmd(&mut s, Command::NextSize);
    assert_eq!((s.editor.width, s.editor.height), (512, 512));
    for _ in 0..5 {
        cmd(&mut s, Command::NextSize);
    }
    assert_eq!(
        (s.editor.width, s.editor.height),
        (0, 0),
        "back to the source's size"
    );
    assert_eq!(s.editor.model, "m");
    cmd(&mut s, Command::NextModel);
    assert_eq!(s.editor.model, "sd-turbo");
    // Untouched settings follow the model's recommendation.
    assert_eq!((s.editor.steps, s.editor.guidance), (4, 0.0));
    // Through every other alias and back to the project's model.
    for _ in 0..crate::models::ALIASES.len() {
        cmd(&mut s, Command::NextModel);
    }
    assert_eq!(s.editor.model, "m");
    assert_eq!((s.editor.steps, s.editor.guidance), (30, 7.5));
    // Models found on the machine come before the aliases, once each.
    s.models = vec!["/models/mine".into(), "sdxl-turbo".into()];
    cmd(&mut s, Command::NextModel);
    assert_eq!(s.editor.model, "/models/mine");
    cmd(&mut s, Command::NextModel);
    assert_eq!(s.editor.model, "sdxl-turbo");
    cmd(&mut s, Command::NextModel);
    assert_eq!(s.editor.model, "sd-turbo");
    for _ in 0..crate::models::ALIASES.len() - 1 {
        cmd(&mut s, Command::NextModel);
    }
    assert_eq!(s.editor.model, "m", "sdxl-turbo came once");
}
