//! Contact sheets: images in a grid with text labels (an 8x8 bitmap font,
//! so no font files are needed), for sweeps and comparisons.

use font8x8::UnicodeFonts;
use image::imageops::FilterType;
use image::{Rgb, RgbImage};

const BG: Rgb<u8> = Rgb([24, 24, 28]);
const FG: Rgb<u8> = Rgb([235, 235, 235]);
const ACCENT: Rgb<u8> = Rgb([255, 200, 80]);
const SCALE: u32 = 2;
const LINE: u32 = 8 * SCALE + 4;
const PAD: u32 = 8;

/// Draws `text` at (x, y), each font pixel `scale` pixels wide, clipped to
/// the image; non-ASCII shows as '?'.
fn draw_text(img: &mut RgbImage, (x, y): (u32, u32), (text, scale): (&str, u32), color: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(c)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = x + (i as u32 * 8 + col) * scale + dx;
                        let py = y + row as u32 * scale + dy;
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, color);
                        }
                    }
                }
            }
        }
    }
}

/// `line` as it fits in `width` pixels, with the scale to draw it at: the
/// full size, else half size (a setting's value is what the label is
/// for, so it is shrunk before it is cut), else cut to fit with a `~`.
fn fit(line: &str, width: u32) -> (String, u32) {
    let len = line.chars().count() as u32;
    if len * 8 * SCALE <= width {
        return (line.to_string(), SCALE);
    }
    let small = SCALE / 2;
    let room = (width / (8 * small)).max(1) as usize;
    if len as usize <= room {
        return (line.to_string(), small);
    }
    let cut: String = line.chars().take(room - 1).collect();
    (cut + "~", small)
}

/// Draws `line` fitted to `width` pixels (see [`fit`]), the smaller text
/// centred in the line's height.
fn draw_fitted(img: &mut RgbImage, (x, y): (u32, u32), line: &str, width: u32, color: Rgb<u8>) {
    let (text, scale) = fit(line, width);
    let y = y + 8 * (SCALE - scale) / 2;
    draw_text(img, (x, y), (&text, scale), color);
}

/// One cell: an image (scaled to fit `cell` pixels) and its labels.
pub struct Cell {
    pub image: Option<RgbImage>,
    pub labels: Vec<String>,
    /// Drawn in the accent colour (the settings that differ).
    pub highlight: Vec<String>,
}

/// A grid of cells, `columns` wide, with an optional title, row and column
/// headers.
pub fn grid(
    title: &str,
    column_headers: &[String],
    row_headers: &[String],
    cells: &[Cell],
    columns: usize,
    cell: u32,
) -> RgbImage {
    let columns = columns.max(1);
    let rows = cells.len().div_ceil(columns);
    let label_lines = cells
        .iter()
        .map(|c| c.labels.len() + c.highlight.len())
        .max()
        .unwrap_or(0) as u32;
    let row_header_w = if row_headers.is_empty() {
        0
    } else {
        (row_headers
            .iter()
            .map(|h| h.chars().count())
            .max()
            .unwrap_or(0) as u32
            * 8
            * SCALE
            + PAD)
            .min(cell)
    };
    let title_h = if title.is_empty() { 0 } else { LINE + PAD };
    let header_h = if column_headers.is_empty() { 0 } else { LINE };
    let cell_h = cell + label_lines * LINE + PAD;
    let width = row_header_w + columns as u32 * (cell + PAD) + PAD;
    let height = title_h + header_h + rows as u32 * cell_h + PAD;
    let mut sheet = RgbImage::from_pixel(width, height, BG);
    draw_fitted(&mut sheet, (PAD, PAD), title, width - 2 * PAD, FG);
    for (c, header) in column_headers.iter().enumerate().take(columns) {
        let x = row_header_w + PAD + c as u32 * (cell + PAD);
        draw_fitted(&mut sheet, (x, title_h), header, cell, ACCENT);
    }
    for (i, c) in cells.iter().enumerate() {
        let (row, col) = ((i / columns) as u32, (i % columns) as u32);
        let x = row_header_w + PAD + col * (cell + PAD);
        let y = title_h + header_h + row * cell_h;
        if col == 0 {
            if let Some(h) = row_headers.get(row as usize) {
                draw_fitted(&mut sheet, (PAD, y + cell / 2), h, row_header_w, ACCENT);
            }
        }
        match &c.image {
            Some(img) => {
                let thumb = image::imageops::resize(img, cell, cell, FilterType::Triangle);
                let scale =
                    (cell as f64 / img.width() as f64).min(cell as f64 / img.height() as f64);
                let (tw, th) = (
                    ((img.width() as f64 * scale) as u32).max(1),
                    ((img.height() as f64 * scale) as u32).max(1),
                );
                let thumb = if (tw, th) == (cell, cell) {
                    thumb
                } else {
                    image::imageops::resize(img, tw, th, FilterType::Triangle)
                };
                image::imageops::replace(
                    &mut sheet,
                    &thumb,
                    (x + (cell - tw) / 2) as i64,
                    (y + (cell - th) / 2) as i64,
                );
            }
            None => draw_fitted(&mut sheet, (x + PAD, y + cell / 2), "(no image)", cell, FG),
        }
        let mut ly = y + cell + 4;
        for line in &c.labels {
            draw_fitted(&mut sheet, (x, ly), line, cell, FG);
            ly += LINE;
        }
        for line in &c.highlight {
            draw_fitted(&mut sheet, (x, ly), line, cell, ACCENT);
            ly += LINE;
        }
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_drawn_and_clipped() {
        let mut img = RgbImage::from_pixel(40, 20, BG);
        draw_text(&mut img, (0, 0), ("Hi there, long text", SCALE), FG);
        assert!(img.pixels().any(|p| *p == FG));
    }

    #[test]
    fn a_label_shrinks_before_it_is_cut() {
        // 12 characters fit a 192-pixel cell at full size, 24 at half.
        assert_eq!(fit("strength 0.5", 192), ("strength 0.5".into(), 2));
        assert_eq!(fit("strength 0.55", 192), ("strength 0.55".into(), 1));
        let long = "prompt a red fox in the snow at night";
        assert_eq!(fit(long, 192), ("prompt a red fox in the~".into(), 1));
    }

    #[test]
    fn grid_has_room_for_every_cell_and_label() {
        let cells: Vec<Cell> = (0..5)
            .map(|i| Cell {
                image: Some(RgbImage::from_pixel(64, 32, Rgb([i * 40, 0, 0]))),
                labels: vec![format!("#{i}")],
                highlight: vec![],
            })
            .collect();
        let sheet = grid("title", &["a".into(), "b".into()], &[], &cells, 2, 64);
        assert_eq!(sheet.width(), 2 * (64 + PAD) + PAD);
        assert!(sheet.height() >= 3 * 64);
    }
}
