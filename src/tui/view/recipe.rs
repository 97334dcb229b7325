//! The recipe panel: the settings the next run gets, those that differ
//! from the recalled run highlighted. Where the panel is wide enough the
//! settings go in two columns, so that all of them show under the history
//! on an 80x24 or 60x20 terminal; the layout asks [`height`] first.

use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{block, cut, cut_start};
use crate::tui::state::{
    differing_fields, scheduler_label, Editor, Mode, Seed, State, TextField, ASPECTS,
};
use crate::tui::theme::Theme;

/// Width of a setting's name.
const LABEL: usize = 10;
/// The narrowest a column of settings may be: a name and "0.60 (18/30 steps)".
const MIN_COLUMN: usize = 29;
/// The crop map's size in cells.
const MAP_COLS: usize = 28;
const MAP_ROWS: usize = 8;

/// One setting as shown.
struct Setting {
    name: &'static str,
    value: String,
}

/// Rows the panel needs at outer `width`, borders included.
pub fn height(s: &State, width: u16) -> u16 {
    let inner = width.saturating_sub(2) as usize;
    let mut rows = text_rows(s).len()
        + settings(s, value_width(inner))
            .len()
            .div_ceil(columns(inner));
    if s.mode == Mode::Crop && s.source_size.is_some() {
        rows += MAP_ROWS;
    }
    rows as u16 + 2
}

fn columns(inner: usize) -> usize {
    if inner >= 2 * MIN_COLUMN {
        2
    } else {
        1
    }
}

/// Room for a setting's value in one column, a space kept after it.
fn value_width(inner: usize) -> usize {
    (inner / columns(inner)).saturating_sub(LABEL + 1)
}

pub fn draw(frame: &mut Frame, s: &State, theme: &Theme, area: Rect) {
    let editing = matches!(s.mode, Mode::Edit(_));
    let title = if s.read_only.is_some() {
        " recipe (read-only) "
    } else {
        " recipe (g generates) "
    };
    let outer = block(title, theme, editing);
    let inner = outer.inner(area);
    frame.render_widget(outer, area);
    let width = inner.width as usize;
    // Settings that differ from the recalled run are highlighted.
    let base = s
        .editor
        .parent
        .and_then(|p| s.run(p))
        .map(|r| r.recipe.clone());
    let current = s.editor.recipe(0, s.next_random);
    let changed = base
        .as_ref()
        .map(|b| differing_fields(b, &current))
        .unwrap_or_default();
    let style_for = |name: &str| {
        if changed.contains(&name) {
            theme.changed
        } else {
            theme.text
        }
    };
    let label = |name: &'static str| Span::styled(format!("{name:<LABEL$}"), theme.dim);

    let mut lines = Vec::new();
    for row in text_rows(s) {
        let mut value = cut(row.text, width.saturating_sub(LABEL + 1));
        if row.cursor {
            value.push('▏');
        }
        let style = if row.active {
            theme.accent
        } else {
            style_for(row.name)
        };
        lines.push(Line::from(vec![
            if row.first {
                label(row.name)
            } else {
                Span::raw(" ".repeat(LABEL))
            },
            Span::styled(value, style),
        ]));
    }
    let values = value_width(width);
    let cell = |setting: &Setting| -> Vec<Span> {
        let value = format!("{:<values$}", cut(&setting.value, values));
        vec![
            label(setting.name),
            Span::styled(value, style_for(setting.name)),
        ]
    };
    let settings = settings(s, values);
    let per_column = settings.len().div_ceil(columns(width));
    for row in 0..per_column {
        let mut spans = cell(&settings[row]);
        if let Some(right) = settings.get(row + per_column) {
            spans.push(Span::raw(" "));
            spans.extend(cell(right));
        }
        lines.push(Line::from(spans));
    }
    // While cropping, a map of the source with the crop marked, in the
    // rows left (the status line says which keys move it).
    if let (Mode::Crop, Some(size)) = (&s.mode, s.source_size) {
        let room = (inner.height as usize).saturating_sub(lines.len());
        if room >= 2 {
            lines.extend(crop_map(&s.editor, size, room.min(MAP_ROWS), theme.accent));
        }
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

/// One line of the prompt or the negative prompt.
struct TextRow<'a> {
    name: &'static str,
    text: &'a str,
    /// The first line of its field, which carries the name.
    first: bool,
    /// Being typed into.
    active: bool,
    /// The last line shown of the field being typed into.
    cursor: bool,
}

/// The prompts' lines: two of each, four of the one being typed.
fn text_rows(s: &State) -> Vec<TextRow<'_>> {
    let mut rows = Vec::new();
    for (field, name, text) in [
        (TextField::Prompt, "prompt", &s.editor.prompt),
        (TextField::Negative, "negative", &s.editor.negative),
    ] {
        let active = s.mode == Mode::Edit(field);
        let parts: Vec<&str> = if text.is_empty() {
            vec![""]
        } else {
            text.split('\n').collect()
        };
        let shown = parts.len().min(if active { 4 } else { 2 });
        for (k, part) in parts.into_iter().take(shown).enumerate() {
            rows.push(TextRow {
                name,
                text: part,
                first: k == 0,
                active,
                cursor: active && k == shown - 1,
            });
        }
    }
    rows
}

/// Every setting but the prompts, in reading order (down the first
/// column, then the second); `width` is the room for a value.
fn settings(s: &State, width: usize) -> Vec<Setting> {
    let e = &s.editor;
    let seed = match e.seed {
        Seed::Random => "random".to_string(),
        Seed::Fixed(x) => x.to_string(),
    };
    let size = if e.width == 0 {
        source_size(s)
    } else {
        format!("{}x{}", e.width, e.height)
    };
    let source = match &e.source {
        Some(src) => match src.run {
            Some(id) => format!("output of #{id}"),
            None => src.hash.get(..8).unwrap_or("").to_string(),
        },
        None => s
            .selected_run()
            .map(|r| format!("{} (selected)", &r.source.get(..8).unwrap_or("")))
            .unwrap_or_else(|| "none".into()),
    };
    let crop = match e.crop {
        Some(c) => format!("{c}{}", aspect_label(e.aspect)),
        None if s.mode == Mode::Crop => format!("whole source{}", aspect_label(e.aspect)),
        None => "none (c to crop)".into(),
    };
    let parent = e
        .parent
        .map(|p| format!("#{p}"))
        .unwrap_or_else(|| "none".into());
    [
        ("strength", strength(e, width)),
        ("steps", e.steps.to_string()),
        ("guidance", format!("{}", e.guidance)),
        ("seed", seed),
        ("count", e.count.to_string()),
        ("scheduler", scheduler_label(&e.scheduler)),
        ("size", format!("{size}  fit {}", e.fit)),
        ("crop", crop),
        ("model", cut_start(&e.model, width)),
        ("device", s.device.clone()),
        ("source", source),
        ("parent", parent),
    ]
    .into_iter()
    .map(|(name, value)| Setting { name, value })
    .collect()
}

/// "source's" with what that comes to, where the source's size is known,
/// or that it is too large.
fn source_size(s: &State) -> String {
    let known = match s.editor.crop {
        Some(c) => Some((c.w, c.h)),
        None => s.source_size,
    };
    match known.map(|size| crate::engine::source::output_size(size, None, None)) {
        Some(Ok((w, h))) => format!("source's {w}x{h}"),
        Some(Err(_)) => "source's: too large, z".to_string(),
        None => "source's".to_string(),
    }
}

/// The strength with the steps it will run, shorter where room is short.
fn strength(e: &Editor, width: usize) -> String {
    let long = format!(
        "{:.2}  ({} of {} steps run)",
        e.strength,
        e.steps_run(),
        e.steps
    );
    if long.chars().count() <= width {
        long
    } else {
        format!("{:.2} ({}/{} steps)", e.strength, e.steps_run(), e.steps)
    }
}

fn aspect_label(aspect: usize) -> String {
    match ASPECTS[aspect % ASPECTS.len()] {
        (0, 0) => String::new(),
        (w, h) => format!("  ({w}:{h})"),
    }
}

/// A map of the source with the crop marked, `rows` high.
fn crop_map(e: &Editor, (sw, sh): (u32, u32), rows: usize, style: Style) -> Vec<Line<'static>> {
    let c = e.crop.unwrap_or(crate::engine::CropRect {
        x: 0,
        y: 0,
        w: sw,
        h: sh,
    });
    let to_col = |x: u32| (x as usize * MAP_COLS / sw.max(1) as usize).min(MAP_COLS);
    let to_row = |y: u32| (y as usize * rows / sh.max(1) as usize).min(rows);
    let (x0, x1, y0, y1) = (
        to_col(c.x),
        to_col(c.x + c.w).max(to_col(c.x) + 1),
        to_row(c.y),
        to_row(c.y + c.h).max(to_row(c.y) + 1),
    );
    (0..rows)
        .map(|row| {
            let text: String = (0..MAP_COLS)
                .map(|col| {
                    if (x0..x1).contains(&col) && (y0..y1).contains(&row) {
                        '█'
                    } else {
                        '·'
                    }
                })
                .collect();
            Line::from(vec![
                Span::raw(" ".repeat(LABEL)),
                Span::styled(text, style),
            ])
        })
        .collect()
}
