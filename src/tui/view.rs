//! Drawing: reads the state, writes the frame, nothing else. Only the rows
//! on screen are built, so a history of any length draws in constant time.

use super::images::{ImageSlot, Thumbs, THUMB_H, THUMB_W};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;
use ratatui_image::StatefulImage;

use super::keymap::Keymap;
use super::state::{differing_fields, JobState, Mode, State};
use super::theme::Theme;
use crate::project::Status;

mod recipe;

/// What the preview pane shows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PreviewTarget {
    /// A run's output.
    Run(u64),
    /// A source image by hash.
    Source(String),
    /// The running job's live preview.
    Live(u64),
}

/// The preview target for the current state and its title.
pub fn preview_target(s: &State) -> Option<(PreviewTarget, String)> {
    if s.mode == Mode::Crop {
        // Cropping shows the source the editor will use.
        return match &s.editor.source {
            Some(src) if src.hash.is_empty() => src
                .run
                .map(|id| (PreviewTarget::Run(id), format!("crop: output of #{id}"))),
            Some(src) => Some((
                PreviewTarget::Source(src.hash.clone()),
                "crop: source".to_string(),
            )),
            None => s.selected_run().map(|r| {
                (
                    PreviewTarget::Source(r.source.clone()),
                    "crop: source".to_string(),
                )
            }),
        };
    }
    let run = s.selected_run()?;
    if !s.show_b {
        if let Some(job) = s.running().filter(|j| j.id == run.id) {
            return Some((
                PreviewTarget::Live(job.id),
                format!("A: {} (live)", run.label()),
            ));
        }
        if run.status.has_image() {
            return Some((PreviewTarget::Run(run.id), format!("A: {}", run.label())));
        }
        return None;
    }
    match s.b_run() {
        Some(b) => Some((
            PreviewTarget::Run(b.id),
            format!("B: {} (marked)", b.label()),
        )),
        None => Some((
            PreviewTarget::Source(run.source.clone()),
            format!("B: source of {}", run.label()),
        )),
    }
}

fn block<'a>(title: impl Into<Line<'a>>, theme: &Theme, focused: bool) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(if focused { theme.accent } else { theme.border })
        .title(title)
}

/// Draws everything. `preview` is the image for `preview_target(state)`, if loaded.
pub fn draw(
    frame: &mut Frame,
    s: &State,
    theme: &Theme,
    keymap: &Keymap,
    preview: Option<&mut ImageSlot>,
    thumbs: Option<&Thumbs>,
) {
    let area = frame.area();
    frame.render_widget(Block::default().style(theme.text), area);
    let queue_h = if s.jobs.is_empty() {
        0
    } else {
        (s.jobs.len() as u16 + 2).min(6)
    };
    let [main, queue, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(queue_h),
        Constraint::Length(1),
    ])
    .areas(area);
    let wide = main.width >= 100 && main.height >= 16;
    if wide {
        let [history, preview_area, recipe] = Layout::horizontal([
            Constraint::Percentage(34),
            Constraint::Min(20),
            Constraint::Length(44),
        ])
        .areas(main);
        draw_history(frame, s, theme, history, thumbs);
        draw_preview(frame, s, theme, preview_area, preview);
        recipe::draw(frame, s, theme, recipe);
    } else {
        // Smaller terminals: the recipe at the bottom with the rows it needs
        // (leaving the history at least 5); above it the history, and the
        // preview beside it (80 columns and more) or under it (30 rows and
        // more) where there is room.
        let recipe_h = recipe::height(s, main.width).min(main.height.saturating_sub(5));
        let [top, recipe_area] =
            Layout::vertical([Constraint::Min(4), Constraint::Length(recipe_h)]).areas(main);
        if top.height >= 16 {
            let [history, preview_area] =
                Layout::vertical([Constraint::Percentage(45), Constraint::Min(6)]).areas(top);
            draw_history(frame, s, theme, history, None);
            draw_preview(frame, s, theme, preview_area, preview);
        } else if top.width >= 80 && top.height >= 8 {
            let [history, preview_area] =
                Layout::horizontal([Constraint::Percentage(50), Constraint::Min(20)]).areas(top);
            draw_history(frame, s, theme, history, None);
            draw_preview(frame, s, theme, preview_area, preview);
        } else {
            draw_history(frame, s, theme, top, None);
        }
        recipe::draw(frame, s, theme, recipe_area);
    }
    if queue_h > 0 {
        draw_queue(frame, s, theme, queue);
    }
    draw_status(frame, s, theme, keymap, status);
    match s.mode {
        Mode::Help(offset) => draw_help(frame, theme, keymap, area, offset),
        Mode::ConfirmQuit => draw_confirm(frame, theme, area),
        Mode::Styles(i) => draw_styles(frame, s, theme, area, i),
        _ => {}
    }
}

fn cut(text: &str, width: usize) -> String {
    let line = text.replace('\n', " ");
    if line.chars().count() <= width {
        line
    } else {
        line.chars()
            .take(width.saturating_sub(1))
            .collect::<String>()
            + "…"
    }
}

/// `text` in `width` characters, its start given up for its end: a path's
/// last folders name the model.
fn cut_start(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        text.to_string()
    } else {
        let keep = width.saturating_sub(1);
        "…".to_string() + &text.chars().skip(count - keep).collect::<String>()
    }
}

fn status_style(theme: &Theme, status: Status) -> ratatui::style::Style {
    match status {
        Status::Done | Status::Imported => theme.ok,
        Status::Failed => theme.error,
        Status::Running | Status::Queued => theme.running,
        Status::Cancelled => theme.dim,
    }
}

/// The half-block cells of one thumbnail line (row 0 or 1).
fn thumb_cells(thumb: Option<&image::RgbImage>, row: u32, colour: bool) -> Vec<Span<'static>> {
    match thumb.filter(|t| colour && t.width() == THUMB_W && t.height() == THUMB_H) {
        Some(t) => (0..THUMB_W)
            .map(|x| {
                let (top, bottom) = (*t.get_pixel(x, row * 2), *t.get_pixel(x, row * 2 + 1));
                Span::styled(
                    "▀",
                    ratatui::style::Style::default()
                        .fg(ratatui::style::Color::Rgb(top[0], top[1], top[2]))
                        .bg(ratatui::style::Color::Rgb(bottom[0], bottom[1], bottom[2])),
                )
            })
            .collect(),
        None => vec![Span::raw(" ".repeat(THUMB_W as usize))],
    }
}

/// The slice of `visible` shown in a list of `entries` entries: a window
/// around the selection.
pub fn history_window(s: &State, entries: usize) -> std::ops::Range<usize> {
    let start = s
        .selected
        .saturating_sub(entries / 2)
        .min(s.visible.len().saturating_sub(entries));
    start..(start + entries).min(s.visible.len())
}

fn draw_history(frame: &mut Frame, s: &State, theme: &Theme, area: Rect, thumbs: Option<&Thumbs>) {
    let title = if s.mode == Mode::Filter || !s.filter.is_empty() {
        format!(
            " history ({}) /{}{} ",
            s.view.name(),
            s.filter,
            if s.mode == Mode::Filter { "▏" } else { "" }
        )
    } else {
        format!(
            " history ({}, {} run{}) ",
            s.view.name(),
            s.visible.len(),
            if s.visible.len() == 1 { "" } else { "s" }
        )
    };
    let outer = block(title, theme, s.mode == Mode::Filter);
    let inner = outer.inner(area);
    frame.render_widget(outer, area);
    let rows = inner.height as usize;
    if rows == 0 {
        return;
    }
    // With thumbnails each run takes two lines.
    let per_entry = if thumbs.is_some() { 2 } else { 1 };
    let window = history_window(s, (rows / per_entry).max(1));
    let width = inner.width as usize;
    let colour =
        theme.text.fg != Some(ratatui::style::Color::Reset) || theme.selection.bg.is_some();
    let mut lines: Vec<Line> = Vec::with_capacity(rows);
    for (k, &(i, depth)) in s.visible[window.clone()].iter().enumerate() {
        let r = &s.runs[i];
        let selected = window.start + k == s.selected;
        let indent = "  ".repeat(depth.min(8));
        let thumb = thumbs.and_then(|t| t.get(&r.id));
        let thumb_w = if thumbs.is_some() {
            THUMB_W as usize + 1
        } else {
            0
        };
        let head = format!(
            "{indent}{:>5} {} {:.2} ",
            r.label(),
            if r.starred { "*" } else { " " },
            r.recipe.strength
        );
        let state = format!("{:<9}", r.status.name());
        let rest = width.saturating_sub(thumb_w + head.chars().count() + state.chars().count() + 1);
        let prompt = cut(&r.recipe.prompt, rest);
        let mut first: Vec<Span> = Vec::new();
        if thumbs.is_some() {
            first.extend(thumb_cells(thumb, 0, colour));
            first.push(Span::raw(" "));
        }
        if selected {
            first.push(Span::styled(
                format!("{head}{state} {prompt:<rest$}"),
                theme.selection,
            ));
        } else {
            first.push(Span::styled(
                head,
                if Some(r.id) == s.marked {
                    theme.accent
                } else {
                    theme.text
                },
            ));
            first.push(Span::styled(state, status_style(theme, r.status)));
            first.push(Span::styled(format!(" {prompt}"), theme.dim));
        }
        lines.push(Line::from(first));
        if thumbs.is_some() {
            let mut second = thumb_cells(thumb, 1, colour);
            let detail = format!(
                " {indent}seed {}  {} steps  cfg {}  {}",
                r.recipe.seed,
                r.recipe.steps,
                r.recipe.guidance,
                r.created.get(..16).unwrap_or(&r.created).replace('T', " ")
            );
            second.push(Span::styled(
                cut(&detail, width.saturating_sub(thumb_w)),
                if selected { theme.selection } else { theme.dim },
            ));
            lines.push(Line::from(second));
        }
    }
    if lines.is_empty() {
        let hint = if s.runs.is_empty() {
            "no runs yet: press e to write a prompt; a source comes from `atelier gen --source FILE` or u on a run"
        } else {
            "no run matches the filter"
        };
        frame.render_widget(
            Paragraph::new(hint)
                .style(theme.dim)
                .wrap(Wrap { trim: true }),
            inner,
        );
    } else {
        frame.render_widget(Paragraph::new(lines), inner);
    }
}

fn draw_preview(
    frame: &mut Frame,
    s: &State,
    theme: &Theme,
    area: Rect,
    preview: Option<&mut ImageSlot>,
) {
    let target = preview_target(s);
    let title = target
        .as_ref()
        .map(|(_, t)| format!(" {t} "))
        .unwrap_or_else(|| " preview ".into());
    let outer = block(title, theme, s.show_b);
    let inner = outer.inner(area);
    frame.render_widget(outer, area);
    // The last line names what differs between A and B.
    let [image_area, diff_area] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    match (target, preview) {
        (Some(_), Some(protocol)) => {
            // ratatui-image gives the size; the image sits at the area's top left.
            let shown = protocol.size_for(image_area.as_size()).map(|r| Rect {
                x: image_area.x,
                y: image_area.y,
                width: r.width.min(image_area.width),
                height: r.height.min(image_area.height),
            });
            frame.render_stateful_widget(
                StatefulImage::default().resize(super::images::PREVIEW_RESIZE),
                image_area,
                protocol,
            );
            if let (Mode::Crop, Some(rect), Some((sw, sh))) = (&s.mode, shown, s.source_size) {
                draw_crop_overlay(frame, s, theme, rect, (sw, sh));
            }
        }
        (Some(_), None) => {
            frame.render_widget(Paragraph::new("loading…").style(theme.dim), image_area)
        }
        (None, _) => {
            let text = match s.selected_run() {
                Some(r) => format!("{} has no image ({})", r.label(), r.status.name()),
                None => "nothing selected".into(),
            };
            frame.render_widget(
                Paragraph::new(text)
                    .style(theme.dim)
                    .wrap(Wrap { trim: true }),
                image_area,
            );
        }
    }
    if let (Some(a), Some(b)) = (s.selected_run(), s.b_run()) {
        let diff = differing_fields(&a.recipe, &b.recipe);
        let text = if diff.is_empty() {
            format!("{} and {}: same recipe", a.label(), b.label())
        } else {
            format!("{} vs {}: {}", a.label(), b.label(), diff.join(", "))
        };
        frame.render_widget(Paragraph::new(text).style(theme.changed), diff_area);
    }
}

/// The crop rectangle drawn over the source as shown in `rect`.
fn draw_crop_overlay(
    frame: &mut Frame,
    s: &State,
    theme: &Theme,
    rect: Rect,
    (sw, sh): (u32, u32),
) {
    let c = s.editor.crop.unwrap_or(crate::engine::CropRect {
        x: 0,
        y: 0,
        w: sw,
        h: sh,
    });
    let scale_x = |x: u32| (x as u64 * rect.width as u64 / sw.max(1) as u64) as u16;
    let scale_y = |y: u32| (y as u64 * rect.height as u64 / sh.max(1) as u64) as u16;
    let x = rect.x + scale_x(c.x);
    let y = rect.y + scale_y(c.y);
    let w = scale_x(c.w).max(2).min(rect.x + rect.width - x);
    let h = scale_y(c.h).max(2).min(rect.y + rect.height - y);
    let frame_rect = Rect {
        x,
        y,
        width: w,
        height: h,
    };
    frame.render_widget(
        Block::default()
            .borders(Borders::ALL)
            .border_style(theme.accent),
        frame_rect,
    );
}

fn draw_queue(frame: &mut Frame, s: &State, theme: &Theme, area: Rect) {
    let outer = block(" queue (x cancels, d removes, p promotes) ", theme, false);
    let inner = outer.inner(area);
    frame.render_widget(outer, area);
    let lines: Vec<Line> = s
        .jobs
        .iter()
        .map(|j| {
            let text = match &j.state {
                JobState::Queued => format!("#{}  queued", j.id),
                JobState::Loading => format!("#{}  loading the model / encoding", j.id),
                JobState::Running {
                    step,
                    of,
                    seconds_per_step,
                } => {
                    let eta = (of - step) as f64 * seconds_per_step;
                    let filled = (step * 20).checked_div(*of).unwrap_or(0);
                    format!(
                        "#{}  [{}{}] {step}/{of}  {seconds_per_step:.2} s/step  ETA {eta:.1} s",
                        j.id,
                        "=".repeat(filled),
                        " ".repeat(20 - filled)
                    )
                }
                JobState::Decoding => format!("#{}  decoding", j.id),
            };
            Line::from(text).style(if j.state == JobState::Queued {
                theme.dim
            } else {
                theme.running
            })
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_status(frame: &mut Frame, s: &State, theme: &Theme, keymap: &Keymap, area: Rect) {
    let text = match s.mode {
        Mode::Edit(_) => "typing: Enter for a new line, Esc to finish".to_string(),
        Mode::Filter => "filter: type, Enter or Esc to finish".to_string(),
        Mode::Crop => {
            "crop: arrows or hjkl move, + / - size, a aspect, 0 clears, Esc ends".to_string()
        }
        Mode::Styles(_) => "styles: j/k choose, Enter inserts, Esc closes".to_string(),
        _ if !s.message.is_empty() => s.message.clone(),
        _ if s.read_only.is_some() => format!(
            "read-only: {}; runs show as they are made, g takes over once it can be written",
            s.read_only.as_deref().unwrap_or_default()
        ),
        _ => {
            let k = |c| keymap.keys(c).first().cloned().unwrap_or_default();
            use super::keymap::Command::*;
            format!(
                "{} generate  {} recall  {} edit  {}/{} strength  {} A/B  {} cancel  {} help  {} quit",
                k(Generate), k(Recall), k(EditPrompt), k(StrengthDown), k(StrengthUp), k(ToggleAb), k(Cancel), k(Help), k(Quit)
            )
        }
    };
    frame.render_widget(
        Paragraph::new(cut(&text, area.width as usize)).style(theme.dim),
        area,
    );
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

const HELP_COLUMN: u16 = 72;

/// The help's columns and the lines each shows in `area`: one column when
/// it fits; two on short terminals wide enough for them; else one that
/// j/k scroll.
fn help_layout(area: Rect, lines: usize) -> (usize, usize) {
    let room = area.height.saturating_sub(2) as usize;
    let two = lines > room && area.width >= 2 * HELP_COLUMN && lines <= 2 * room;
    (if two { 2 } else { 1 }, room)
}

/// How far the help scrolls in `area` (0 where it fits).
pub fn help_max_offset(area: Rect, lines: usize) -> usize {
    match help_layout(area, lines) {
        (1, room) => lines.saturating_sub(room),
        _ => 0,
    }
}

fn draw_help(frame: &mut Frame, theme: &Theme, keymap: &Keymap, area: Rect, offset: usize) {
    let lines: Vec<Line> = keymap
        .help_lines()
        .into_iter()
        .map(|(keys, what)| {
            Line::from(vec![
                Span::styled(format!("{keys:>10}  "), theme.accent),
                Span::styled(what, theme.text),
            ])
        })
        .collect();
    let (columns, room) = help_layout(area, lines.len());
    let per_column = lines.len().div_ceil(columns);
    let scrolls = per_column > room;
    let popup = centered(area, HELP_COLUMN * columns as u16, per_column as u16 + 2);
    frame.render_widget(Clear, popup);
    let title = if scrolls {
        " keys (j/k scroll, any other key closes) "
    } else {
        " keys (any key closes) "
    };
    let outer = block(title, theme, true);
    let inner = outer.inner(popup);
    frame.render_widget(outer, popup);
    if scrolls {
        let first = offset.min(help_max_offset(area, lines.len()));
        frame.render_widget(Paragraph::new(lines[first..].to_vec()), inner);
        return;
    }
    let parts =
        Layout::horizontal(vec![Constraint::Ratio(1, columns as u32); columns]).split(inner);
    for (c, chunk) in lines.chunks(per_column).enumerate() {
        frame.render_widget(Paragraph::new(chunk.to_vec()), parts[c]);
    }
}

fn draw_styles(frame: &mut Frame, s: &State, theme: &Theme, area: Rect, selected: usize) {
    let lines: Vec<Line> = s
        .styles
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let text = format!("{:<16} {}", st.name, st.prompt.trim_start_matches(", "));
            Line::from(cut(&text, 66)).style(if i == selected {
                theme.selection
            } else {
                theme.text
            })
        })
        .collect();
    let popup = centered(area, 70, lines.len() as u16 + 2);
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(block(" styles (Enter inserts, Esc closes) ", theme, true)),
        popup,
    );
}

fn draw_confirm(frame: &mut Frame, theme: &Theme, area: Rect) {
    let popup = centered(area, 56, 6);
    frame.render_widget(Clear, popup);
    let text = "Jobs are running or queued. They stay queued in the project (the running one from its start) and resume next time.\nPress q again to quit, any other key to stay.";
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .block(block(" quit? ", theme, true))
            .style(theme.text),
        popup,
    );
}
