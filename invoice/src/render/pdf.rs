//! The invoice as a PDF (A4), drawn from the same [`View`] as the HTML with `pdf-writer`.
//! Lines flow onto further pages as needed, bounded by [`MAX_PAGES`]. Text that WinAnsi can
//! encode (Latin-1 and a few signs) is set in the standard Helvetica fonts, which need no
//! embedding; any other text (a Japanese or Arabic name, `ł`) is shaped and set in a subset of
//! a font found on the system ([`fonts`]), embedded in the file. Without such a font those
//! characters print as `?` (a warning is logged).

mod fonts;

use std::collections::BTreeMap;

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};

use fonts::{Embedder, Shaped};
pub use fonts::{Fonts, BOLD_FONTS_ENV, DEFAULT_BOLD_FONTS, DEFAULT_FONTS, FONTS_ENV};

use super::view::View;

/// Why a PDF cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("invoice {invoice_id} needs more than {max} pages")]
    TooLong { invoice_id: String, max: usize },
    #[error("font {path} cannot be embedded: {error}")]
    Font { path: String, error: String },
}

/// The most pages one invoice may take.
pub const MAX_PAGES: usize = 500;

const PAGE_W: f32 = 595.0;
const PAGE_H: f32 = 842.0;
const LEFT: f32 = 50.0;
const RIGHT: f32 = PAGE_W - 50.0;
const TOP: f32 = PAGE_H - 50.0;
const BOTTOM: f32 = 60.0;
const DESC_X: f32 = 75.0;
const QTY_RIGHT: f32 = 440.0;
const DESC_W: f32 = 280.0;
const REGULAR: Name<'static> = Name(b"F1");
const BOLD: Name<'static> = Name(b"F2");

/// Pages of drawing commands, with a cursor.
struct Pages<'a> {
    done: Vec<Vec<u8>>,
    page: Content,
    y: f32,
    view: &'a View,
    fonts: Embedder<'a>,
}

impl<'a> Pages<'a> {
    fn new(view: &'a View, fonts: &'a Fonts) -> Self {
        Pages {
            done: Vec::new(),
            page: Content::new(),
            y: TOP,
            view,
            fonts: Embedder::new(fonts),
        }
    }

    /// `s` shaped with the embedded fonts when Helvetica (WinAnsi) cannot show it and a font
    /// can; `None` draws it in Helvetica.
    fn shaped(&mut self, s: &str, bold: bool) -> Option<Shaped> {
        if s.chars().all(|c| win_ansi_byte(c).is_some()) {
            return None;
        }
        self.fonts.shape(s, bold)
    }

    /// The width of `s` in points at `size`, as drawn.
    fn measure(&mut self, s: &str, size: f32, bold: bool) -> f32 {
        match self.shaped(s, bold) {
            Some(shaped) => shaped.width(size),
            None => width(s, size),
        }
    }

    fn text(&mut self, x: f32, size: f32, bold: bool, s: &str) {
        match self.shaped(s, bold) {
            None => {
                self.page
                    .begin_text()
                    .set_font(if bold { BOLD } else { REGULAR }, size)
                    .next_line(x, self.y)
                    .show(Str(&win_ansi(s)))
                    .end_text();
            }
            Some(shaped) => self.glyphs(x, size, &shaped),
        }
    }

    /// Draws shaped text: per font run one `TJ`, with adjustments where the shaped advance
    /// differs from the glyph's width (kerning, joined Arabic forms, marks) and a text rise for
    /// marks set above or below.
    fn glyphs(&mut self, x: f32, size: f32, shaped: &Shaped) {
        self.page.begin_text().next_line(x, self.y);
        let mut rise = 0.0;
        for run in &shaped.runs {
            let name = Embedder::resource(run.face);
            self.page.set_font(Name(name.as_bytes()), size);
            let mut start = 0;
            while start < run.glyphs.len() {
                let y = run.glyphs[start].y_offset;
                let end = run.glyphs[start..]
                    .iter()
                    .position(|g| g.y_offset != y)
                    .map_or(run.glyphs.len(), |n| start + n);
                let r = y * size / 1000.0;
                if r != rise {
                    self.page.set_rise(r);
                    rise = r;
                }
                let mut tj = self.page.show_positioned();
                let mut items = tj.items();
                let mut pending: Vec<u8> = Vec::new();
                for g in &run.glyphs[start..end] {
                    if g.x_offset != 0.0 {
                        if !pending.is_empty() {
                            items.show(Str(&pending));
                            pending.clear();
                        }
                        items.adjust(-g.x_offset);
                    }
                    pending.extend(g.cid.to_be_bytes());
                    let after = g.width - g.advance + g.x_offset;
                    if after.abs() > 0.001 {
                        items.show(Str(&pending));
                        pending.clear();
                        items.adjust(after);
                    }
                }
                if !pending.is_empty() {
                    items.show(Str(&pending));
                }
                items.finish();
                tj.finish();
                start = end;
            }
        }
        if rise != 0.0 {
            self.page.set_rise(0.0);
        }
        self.page.end_text();
    }

    fn text_right(&mut self, right: f32, size: f32, bold: bool, s: &str) {
        let x = right - self.measure(s, size, bold);
        self.text(x, size, bold, s);
    }

    fn gray(&mut self, g: f32) {
        self.page.set_fill_gray(g);
    }

    fn rule(&mut self, width: f32) {
        self.page
            .set_line_width(width)
            .move_to(LEFT, self.y)
            .line_to(RIGHT, self.y)
            .stroke();
    }

    /// Makes room for `height` points, starting a new page when needed.
    fn room(&mut self, height: f32) -> Result<(), RenderError> {
        if self.y - height >= BOTTOM {
            return Ok(());
        }
        if self.done.len() + 1 >= MAX_PAGES {
            return Err(RenderError::TooLong {
                invoice_id: self.view.invoice_id.clone(),
                max: MAX_PAGES,
            });
        }
        let page = std::mem::replace(&mut self.page, Content::new());
        self.done.push(page.finish().into_vec());
        self.y = TOP;
        let title = format!("{} (continued)", self.view.title);
        self.text(LEFT, 10.0, true, &title);
        self.y -= 24.0;
        Ok(())
    }
}

/// The PDF of a view, with the system's fonts ([`Fonts::system`]) for text outside WinAnsi.
pub fn document(v: &View) -> Result<Vec<u8>, RenderError> {
    document_with(v, Fonts::system())
}

/// The PDF of a view, with these fonts for text outside WinAnsi.
pub fn document_with(v: &View, fonts: &Fonts) -> Result<Vec<u8>, RenderError> {
    let mut p = Pages::new(v, fonts);
    header(&mut p);
    p.text(LEFT, 9.0, true, "#");
    p.text(DESC_X, 9.0, true, "Description");
    p.text_right(QTY_RIGHT, 9.0, true, "Quantity");
    p.text_right(RIGHT, 9.0, true, "Amount");
    p.y -= 5.0;
    p.rule(1.0);
    p.y -= 13.0;
    for l in &v.lines {
        let desc = wrap(&l.description, DESC_W, |s| p.measure(s, 10.0, false));
        let details: Vec<String> = l
            .details
            .iter()
            .flat_map(|d| wrap(d, DESC_W, |s| p.measure(s, 8.0, false)))
            .collect();
        p.room(12.0 * desc.len() as f32 + 10.0 * details.len() as f32 + 6.0)?;
        p.text(LEFT, 10.0, false, &l.no);
        p.text_right(QTY_RIGHT, 10.0, false, &l.quantity);
        p.text_right(RIGHT, 10.0, false, &l.amount);
        for d in &desc {
            p.text(DESC_X, 10.0, false, d);
            p.y -= 12.0;
        }
        p.gray(0.4);
        for d in &details {
            p.text(DESC_X, 8.0, false, d);
            p.y -= 10.0;
        }
        p.gray(0.0);
        p.y -= 6.0;
    }
    p.room(16.0 * v.totals.len() as f32 + 40.0)?;
    p.rule(0.5);
    p.y -= 16.0;
    for t in &v.totals {
        p.text_right(QTY_RIGHT, 10.0, t.strong, &t.label);
        p.text_right(RIGHT, 10.0, t.strong, &t.amount);
        p.y -= 16.0;
    }
    p.y -= 10.0;
    p.gray(0.4);
    let footer = format!("Invoice id {}, amounts in {}", v.invoice_id, v.currency);
    p.text(LEFT, 8.0, false, &footer);
    let last = std::mem::replace(&mut p.page, Content::new());
    p.done.push(last.finish().into_vec());
    assemble(&v.title, p.done, &p.fonts)
}

fn header(p: &mut Pages<'_>) {
    let v = p.view;
    p.text(LEFT, 18.0, true, &v.title);
    let mut y = p.y;
    for (i, l) in v.issuer.iter().enumerate() {
        p.y = y;
        p.text_right(RIGHT, 10.0, i == 0, l);
        y -= 13.0;
    }
    p.y = TOP - 34.0;
    let facts = [
        ("Invoice number", v.number.as_str()),
        ("Status", v.status.as_str()),
        ("Bill to", v.customer.as_str()),
        ("Service period", v.period.as_str()),
        ("Plan", v.plan.as_str()),
        ("Issued", v.issued.as_str()),
        ("Due date", v.due.as_str()),
        ("Payment terms", v.terms.as_str()),
    ];
    for (label, value) in facts {
        p.gray(0.4);
        p.text(LEFT, 10.0, false, label);
        p.gray(0.0);
        p.text(LEFT + 100.0, 10.0, label == "Invoice number", value);
        p.y -= 14.0;
    }
    p.y = p.y.min(y) - 16.0;
}

/// The document around the pages' content streams.
fn assemble(
    title: &str,
    pages: Vec<Vec<u8>>,
    fonts: &Embedder<'_>,
) -> Result<Vec<u8>, RenderError> {
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let info = Ref::new(5);
    let first = 6;
    let page_ids: Vec<Ref> = (0..pages.len())
        .map(|i| Ref::new(first + 2 * i as i32))
        .collect();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(page_ids.iter().copied())
        .count(pages.len() as i32);
    pdf.type1_font(regular)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.document_info(info)
        .title(pdf_writer::TextStr(title))
        .producer(pdf_writer::TextStr("Tally invoicer"));
    // Embedded fonts follow the pages (a document without them is as before).
    let mut next = first + 2 * pages.len() as i32;
    let embedded: BTreeMap<usize, Ref> = fonts.embed(&mut pdf, &mut next)?;
    let names: Vec<(String, Ref)> = embedded
        .iter()
        .map(|(&face, &id)| (Embedder::resource(face), id))
        .collect();
    for (i, content) in pages.iter().enumerate() {
        let id = page_ids[i];
        let content_id = Ref::new(id.get() + 1);
        let mut page = pdf.page(id);
        page.media_box(Rect::new(0.0, 0.0, PAGE_W, PAGE_H));
        page.parent(tree);
        page.contents(content_id);
        let mut resources = page.resources();
        let mut fonts = resources.fonts();
        fonts.pair(REGULAR, regular);
        fonts.pair(BOLD, bold);
        for (name, id) in &names {
            fonts.pair(Name(name.as_bytes()), *id);
        }
        fonts.finish();
        resources.finish();
        page.finish();
        pdf.stream(content_id, content);
    }
    Ok(pdf.finish())
}

/// Text in WinAnsiEncoding (Latin-1 plus a few typographic signs); other characters as `?`.
fn win_ansi(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| win_ansi_byte(c).unwrap_or(b'?'))
        .collect()
}

/// A character's WinAnsi code, if it has one (of those this renderer uses).
fn win_ansi_byte(c: char) -> Option<u8> {
    match c {
        ' '..='~' => Some(c as u8),
        '\u{a0}'..='\u{ff}' => Some(c as u32 as u8),
        '€' => Some(0x80),
        '–' => Some(0x96),
        '—' => Some(0x97),
        _ => None,
    }
}

/// Helvetica advance widths (1/1000 em) of ASCII 32..=126, from the standard font metrics.
const HELVETICA: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667,
    611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500,
    222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
];

/// The width of `s` in points at `size` (bold text is drawn a little wider; close enough
/// for right alignment of labels, exact for digits).
fn width(s: &str, size: f32) -> f32 {
    let units: u32 = s
        .chars()
        .map(|c| match c {
            ' '..='~' => u32::from(HELVETICA[c as usize - 32]),
            _ => 556,
        })
        .sum();
    units as f32 * size / 1000.0
}

/// Splits text into lines no wider than `max` points as measured by `width`, at spaces (a
/// longer word stays whole).
fn wrap(s: &str, max: f32, mut width: impl FnMut(&str) -> f32) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in s.split(' ') {
        let candidate = if cur.is_empty() {
            word.to_owned()
        } else {
            format!("{cur} {word}")
        };
        if width(&candidate) > max && !cur.is_empty() {
            lines.push(std::mem::replace(&mut cur, word.to_owned()));
        } else {
            cur = candidate;
        }
    }
    lines.push(cur);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_spaces_within_the_width() {
        let text = "one two three four five six seven eight nine ten eleven twelve";
        let lines = wrap(text, 100.0, |s| width(s, 10.0));
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| width(l, 10.0) <= 100.0));
        assert_eq!(lines.join(" "), text);
    }

    #[test]
    fn encodes_latin_text() {
        assert_eq!(win_ansi("é€x✓"), vec![0xe9, 0x80, b'x', b'?']);
    }
}
