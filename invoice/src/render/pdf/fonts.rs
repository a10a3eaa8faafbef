//! Embedded fonts for text the standard Helvetica cannot show (anything outside WinAnsi: a
//! Japanese or Arabic customer name, a Polish `ł`). The font files are not in the repository:
//! they are found at run time among Debian's font packages (see [`DEFAULT_FONTS`]), or named by
//! `TALLY_PDF_FONTS` / `TALLY_PDF_BOLD_FONTS` (lists of TrueType files separated by `:`, tried
//! in order for each character). Text is put in right-to-left order where the Unicode
//! bidirectional algorithm says so, shaped with `rustybuzz` (Arabic joining forms, ligatures,
//! mark positioning) and drawn with the glyphs of a subset of each font, embedded as a
//! CIDFontType2 (Identity-H) with a ToUnicode map from each glyph to the characters it shows,
//! so copying or extracting the text gives the original characters.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Once, OnceLock};

use pdf_writer::types::{CidFontType, FontFlags, SystemInfo, UnicodeCmap};
use pdf_writer::{Name, Pdf, Rect, Ref, Str};
use rustybuzz::ttf_parser::{name_id, GlyphId};
use rustybuzz::{Direction, UnicodeBuffer};
use subsetter::GlyphRemapper;
use unicode_bidi::BidiInfo;

use super::RenderError;

/// The environment variable naming the regular font files (`:`-separated), in order of
/// preference. Unset: [`DEFAULT_FONTS`].
pub const FONTS_ENV: &str = "TALLY_PDF_FONTS";
/// The environment variable naming the bold font files (`:`-separated), tried before the
/// regular ones for bold text. Unset: [`DEFAULT_BOLD_FONTS`].
pub const BOLD_FONTS_ENV: &str = "TALLY_PDF_BOLD_FONTS";

/// Where Debian's packages put fonts with wide coverage, in order of preference: DejaVu Sans
/// (fonts-dejavu-core: Latin, Greek, Cyrillic, Arabic, Hebrew, ...), Noto Sans
/// (fonts-noto-core) and Droid Sans Fallback (fonts-droid-fallback: Chinese, Japanese, Korean).
/// Missing files are skipped.
pub const DEFAULT_FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSansArabic-Regular.ttf",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
];

/// The bold faces looked for by default; bold text falls back to the regular faces for
/// characters these lack (Droid Sans Fallback has no bold).
pub const DEFAULT_BOLD_FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf",
    "/usr/share/fonts/truetype/noto/NotoSansArabic-Bold.ttf",
];

/// A font file read into memory.
struct FontFile {
    path: PathBuf,
    data: Vec<u8>,
}

/// The fonts text may be drawn with: the regular and bold search lists, read from disk on the
/// first text that needs them.
pub struct Fonts {
    regular: Vec<PathBuf>,
    bold: Vec<PathBuf>,
    loaded: OnceLock<Loaded>,
}

/// The readable TrueType files of a [`Fonts`], each once, with the order to try them in.
struct Loaded {
    files: Vec<FontFile>,
    regular: Vec<usize>,
    bold: Vec<usize>,
}

impl Fonts {
    /// Fonts from these files (missing or unusable files are skipped with a warning when first
    /// needed).
    pub fn new(regular: Vec<PathBuf>, bold: Vec<PathBuf>) -> Self {
        Fonts {
            regular,
            bold,
            loaded: OnceLock::new(),
        }
    }

    /// No fonts: text outside WinAnsi prints as `?`.
    pub fn none() -> Self {
        Fonts::new(Vec::new(), Vec::new())
    }

    /// The fonts named by `TALLY_PDF_FONTS` and `TALLY_PDF_BOLD_FONTS`, or the Debian defaults.
    pub fn from_env() -> Self {
        let list = |var: &str, default: &[&str]| -> Vec<PathBuf> {
            match std::env::var_os(var) {
                Some(v) => std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect(),
                None => default.iter().map(PathBuf::from).collect(),
            }
        };
        Fonts::new(
            list(FONTS_ENV, DEFAULT_FONTS),
            list(BOLD_FONTS_ENV, DEFAULT_BOLD_FONTS),
        )
    }

    /// The process's fonts ([`Fonts::from_env`], looked up once).
    pub fn system() -> &'static Fonts {
        static SYSTEM: OnceLock<Fonts> = OnceLock::new();
        SYSTEM.get_or_init(Fonts::from_env)
    }

    /// The paths of the font files that were found and are usable, regular ones first.
    pub fn usable(&self) -> Vec<PathBuf> {
        self.load().files.iter().map(|f| f.path.clone()).collect()
    }

    fn load(&self) -> &Loaded {
        self.loaded.get_or_init(|| {
            let mut files: Vec<FontFile> = Vec::new();
            let mut index = |path: &PathBuf| -> Option<usize> {
                if let Some(i) = files.iter().position(|f| &f.path == path) {
                    return Some(i);
                }
                let data = std::fs::read(path).ok()?;
                match rustybuzz::Face::from_slice(&data, 0) {
                    Some(face) if face.tables().glyf.is_some() => {}
                    Some(_) => {
                        tracing::warn!(path = %path.display(), "PDF font skipped: only TrueType (glyf) outlines are embedded");
                        return None;
                    }
                    None => {
                        tracing::warn!(path = %path.display(), "PDF font skipped: not a font file");
                        return None;
                    }
                }
                files.push(FontFile {
                    path: path.clone(),
                    data,
                });
                Some(files.len() - 1)
            };
            let regular: Vec<usize> = self.regular.iter().filter_map(&mut index).collect();
            let mut bold: Vec<usize> = self.bold.iter().filter_map(&mut index).collect();
            for &i in &regular {
                if !bold.contains(&i) {
                    bold.push(i);
                }
            }
            Loaded {
                files,
                regular,
                bold,
            }
        })
    }
}

/// One glyph to draw, in thousandths of the font size.
#[derive(Debug, Clone, Copy)]
pub struct Glyph {
    /// The glyph's id in the embedded subset (its CID).
    pub cid: u16,
    /// Where the pen moves after the glyph (the shaped advance).
    pub advance: f32,
    /// The glyph's own width in the font (the PDF's `W` entry for it).
    pub width: f32,
    pub x_offset: f32,
    pub y_offset: f32,
}

/// Glyphs of one font, in visual order (left to right).
#[derive(Debug, Clone)]
pub struct Run {
    pub face: usize,
    pub glyphs: Vec<Glyph>,
}

/// A line of text shaped for drawing: runs left to right.
#[derive(Debug, Clone)]
pub struct Shaped {
    pub runs: Vec<Run>,
}

impl Shaped {
    /// The width in points at `size`.
    pub fn width(&self, size: f32) -> f32 {
        let units: f32 = self
            .runs
            .iter()
            .flat_map(|r| r.glyphs.iter())
            .map(|g| g.advance)
            .sum();
        units * size / 1000.0
    }
}

/// The glyphs one document uses of a font. A CID is one glyph standing for one text: the same
/// glyph standing for other text gets another CID (a parenthesis drawn mirrored in right-to-left
/// text is the other parenthesis's glyph), so each CID's ToUnicode entry is right.
struct Used {
    /// Original glyph id to subset glyph id.
    remapper: GlyphRemapper,
    /// (original glyph id, text) to CID.
    cids: BTreeMap<(u16, String), u16>,
    /// Per CID: the subset glyph id, the characters it stands for, its width (1/1000 em).
    cid_glyph: Vec<(u16, String, f32)>,
}

impl Used {
    fn new() -> Self {
        Used {
            remapper: GlyphRemapper::new(),
            cids: BTreeMap::new(),
            // CID 0 is .notdef.
            cid_glyph: vec![(0, String::new(), 0.0)],
        }
    }

    fn cid(&mut self, gid: u16, text: String, width: f32) -> u16 {
        if gid == 0 {
            return 0;
        }
        let next = self.cid_glyph.len() as u16;
        let remapped = self.remapper.remap(gid);
        let cid = *self.cids.entry((gid, text.clone())).or_insert(next);
        if cid == next {
            self.cid_glyph.push((remapped, text, width));
        }
        cid
    }
}

/// Shapes text with the fonts and remembers the glyphs used, for embedding.
pub struct Embedder<'f> {
    fonts: &'f Fonts,
    faces: Option<Vec<rustybuzz::Face<'f>>>,
    used: BTreeMap<usize, Used>,
}

impl<'f> Embedder<'f> {
    pub fn new(fonts: &'f Fonts) -> Self {
        Embedder {
            fonts,
            faces: None,
            used: BTreeMap::new(),
        }
    }

    /// The resource name of a face.
    pub fn resource(face: usize) -> String {
        format!("E{face}")
    }

    fn faces(&mut self) -> &[rustybuzz::Face<'f>] {
        let fonts = self.fonts;
        self.faces.get_or_insert_with(|| {
            fonts
                .load()
                .files
                .iter()
                .map(|f| rustybuzz::Face::from_slice(&f.data, 0).expect("checked when loaded"))
                .collect()
        })
    }

    /// `s` shaped for drawing, or `None` when no font file is available (the caller then
    /// prints WinAnsi with `?`; a warning is logged once).
    pub fn shape(&mut self, s: &str, bold: bool) -> Option<Shaped> {
        let loaded = self.fonts.load();
        let order: &[usize] = if bold { &loaded.bold } else { &loaded.regular };
        if order.is_empty() {
            static WARNED: Once = Once::new();
            let fonts = self.fonts;
            WARNED.call_once(|| {
                let looked: Vec<String> = fonts
                    .regular
                    .iter()
                    .chain(&fonts.bold)
                    .map(|p| p.display().to_string())
                    .collect();
                tracing::warn!(
                    looked = %looked.join(":"),
                    "no usable font file for PDF text outside WinAnsi: such characters print as '?'; set {FONTS_ENV} or install fonts-dejavu-core and fonts-droid-fallback"
                );
            });
            return None;
        }
        let order = order.to_vec();
        self.faces();
        let bidi = BidiInfo::new(s, None);
        let mut runs = Vec::new();
        for para in &bidi.paragraphs {
            let (levels, visual) = bidi.visual_runs(para, para.range.clone());
            for range in visual {
                let rtl = levels[range.start].is_rtl();
                let mut segments = self.segments(&s[range.clone()], range.start, &order);
                if rtl {
                    segments.reverse();
                }
                for (face, seg) in segments {
                    runs.push(self.shape_segment(face, &s[seg], rtl));
                }
            }
        }
        Some(Shaped { runs })
    }

    /// Splits `text` (starting at byte `base` of the line) into pieces of one font each: a
    /// character stays in the current piece's font when that font has it (spaces, marks,
    /// punctuation), else takes the first font in `order` that has it (else the first font,
    /// whose `.notdef` box then shows it).
    fn segments(
        &self,
        text: &str,
        base: usize,
        order: &[usize],
    ) -> Vec<(usize, std::ops::Range<usize>)> {
        let faces = self.faces.as_deref().unwrap_or(&[]);
        let has = |face: usize, c: char| faces[face].glyph_index(c).is_some();
        let mut out: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for (i, c) in text.char_indices() {
            let at = base + i..base + i + c.len_utf8();
            if let Some((face, range)) = out.last_mut() {
                if has(*face, c) {
                    range.end = at.end;
                    continue;
                }
            }
            let face = order
                .iter()
                .copied()
                .find(|&f| has(f, c))
                .unwrap_or(order[0]);
            match out.last_mut() {
                Some((f, range)) if *f == face => range.end = at.end,
                _ => out.push((face, at)),
            }
        }
        out
    }

    fn shape_segment(&mut self, face: usize, text: &str, rtl: bool) -> Run {
        let faces = self.faces.as_ref().expect("faces parsed");
        let f = &faces[face];
        let upem = f.units_per_em() as f32;
        let mut buffer = UnicodeBuffer::new();
        buffer.push_str(text);
        buffer.guess_segment_properties();
        buffer.set_direction(if rtl {
            Direction::RightToLeft
        } else {
            Direction::LeftToRight
        });
        let shaped = rustybuzz::shape(f, &[], buffer);
        let infos = shaped.glyph_infos();
        let positions = shaped.glyph_positions();
        // The characters each glyph stands for: from its cluster to the next cluster.
        let mut starts: Vec<usize> = infos.iter().map(|g| g.cluster as usize).collect();
        starts.sort_unstable();
        starts.dedup();
        let cluster_text = |cluster: usize| -> &str {
            let end = starts
                .iter()
                .copied()
                .find(|&s| s > cluster)
                .unwrap_or(text.len());
            &text[cluster..end]
        };
        let scale = 1000.0 / upem;
        let mut glyphs = Vec::with_capacity(infos.len());
        let mut claimed = std::collections::BTreeSet::new();
        let used = self.used.entry(face).or_insert_with(Used::new);
        // Logical order (RTL buffers are reversed), so the first glyph of a cluster gets its text.
        let mut logical: Vec<usize> = (0..infos.len()).collect();
        if rtl {
            logical.reverse();
        }
        let mut texts = vec![None; infos.len()];
        for i in logical {
            let cluster = infos[i].cluster as usize;
            if claimed.insert(cluster) {
                texts[i] = Some(cluster_text(cluster));
            }
        }
        for (i, (info, pos)) in infos.iter().zip(positions).enumerate() {
            let gid = info.glyph_id as u16;
            let width = f
                .glyph_hor_advance(GlyphId(gid))
                .map_or(0.0, |w| f32::from(w) * scale);
            // A glyph for several characters (the lam-alef ligature) in right-to-left text maps
            // to them in visual order: extractors put right-to-left text back in logical order
            // character by character (poppler does), which turns them the right way round.
            // Further glyphs of a cluster (a mark drawn separately) stand for no text.
            let t: String = match texts[i] {
                Some(t) if rtl => t.chars().rev().collect(),
                Some(t) => t.to_owned(),
                None => String::new(),
            };
            let cid = used.cid(gid, t, width);
            glyphs.push(Glyph {
                cid,
                advance: pos.x_advance as f32 * scale,
                width,
                x_offset: pos.x_offset as f32 * scale,
                y_offset: pos.y_offset as f32 * scale,
            });
        }
        Run { face, glyphs }
    }

    /// Writes the used fonts (subset) into `pdf`, with object ids from `next` on; returns the
    /// font dictionary's id per face. A font the subsetter cannot read is an error.
    pub fn embed(
        &self,
        pdf: &mut Pdf,
        next: &mut i32,
    ) -> Result<BTreeMap<usize, Ref>, RenderError> {
        let mut alloc = || {
            let r = Ref::new(*next);
            *next += 1;
            r
        };
        let loaded = self.fonts.load();
        let faces = self.faces.as_ref();
        let mut refs = BTreeMap::new();
        for (&face, used) in &self.used {
            let file = &loaded.files[face];
            let f = &faces.expect("faces parsed")[face];
            let data = subsetter::subset(&file.data, 0, &used.remapper).map_err(|e| {
                RenderError::Font {
                    path: file.path.display().to_string(),
                    error: e.to_string(),
                }
            })?;
            let ids = FontIds {
                type0: alloc(),
                cid: alloc(),
                descriptor: alloc(),
                font_file: alloc(),
                cmap: alloc(),
                cid_to_gid: alloc(),
            };
            refs.insert(face, ids.type0);
            let name = base_name(f, face, used);
            write_fonts(pdf, &ids, &name, used);
            write_descriptor(pdf, &ids, f, &name, &data);
            write_maps(pdf, &ids, used);
        }
        Ok(refs)
    }
}

/// The objects of one embedded face, allocated in this order.
struct FontIds {
    type0: Ref,
    cid: Ref,
    descriptor: Ref,
    font_file: Ref,
    cmap: Ref,
    cid_to_gid: Ref,
}

/// The Type0 font (Identity-H) and its CIDFontType2 descendant with each CID's width.
fn write_fonts(pdf: &mut Pdf, ids: &FontIds, name: &str, used: &Used) {
    pdf.type0_font(ids.type0)
        .base_font(Name(name.as_bytes()))
        .encoding_predefined(Name(b"Identity-H"))
        .descendant_font(ids.cid)
        .to_unicode(ids.cmap);
    let mut cid_font = pdf.cid_font(ids.cid);
    cid_font
        .subtype(CidFontType::Type2)
        .base_font(Name(name.as_bytes()))
        .system_info(SystemInfo {
            registry: Str(b"Adobe"),
            ordering: Str(b"Identity"),
            supplement: 0,
        })
        .font_descriptor(ids.descriptor)
        .default_width(0.0)
        .cid_to_gid_map_stream(ids.cid_to_gid);
    cid_font
        .widths()
        .consecutive(0, used.cid_glyph.iter().map(|(_, _, w)| *w));
}

/// The font descriptor (metrics in thousandths of an em) and the subset font file.
fn write_descriptor(
    pdf: &mut Pdf,
    ids: &FontIds,
    f: &rustybuzz::Face<'_>,
    name: &str,
    data: &[u8],
) {
    let scale = 1000.0 / f.units_per_em() as f32;
    let bbox = f.global_bounding_box();
    let ascent = f32::from(f.ascender()) * scale;
    pdf.font_descriptor(ids.descriptor)
        .name(Name(name.as_bytes()))
        .flags(FontFlags::SYMBOLIC)
        .bbox(Rect::new(
            f32::from(bbox.x_min) * scale,
            f32::from(bbox.y_min) * scale,
            f32::from(bbox.x_max) * scale,
            f32::from(bbox.y_max) * scale,
        ))
        .italic_angle(0.0)
        .ascent(ascent)
        .descent(f32::from(f.descender()) * scale)
        .cap_height(f.capital_height().map_or(ascent, |h| f32::from(h) * scale))
        .stem_v(80.0)
        .font_file2(ids.font_file);
    pdf.stream(ids.font_file, data)
        .pair(Name(b"Length1"), data.len() as i32);
}

/// The ToUnicode map (each CID to the characters it shows) and the CID-to-glyph map.
fn write_maps(pdf: &mut Pdf, ids: &FontIds, used: &Used) {
    let mut unicode = UnicodeCmap::new(
        Name(b"Custom"),
        SystemInfo {
            registry: Str(b"Adobe"),
            ordering: Str(b"UCS"),
            supplement: 0,
        },
    );
    for (c, (_, text, _)) in used.cid_glyph.iter().enumerate() {
        if !text.is_empty() {
            unicode.pair_with_multiple(c as u16, text.chars());
        }
    }
    pdf.cmap(ids.cmap, &unicode.finish());
    let map: Vec<u8> = used
        .cid_glyph
        .iter()
        .flat_map(|(g, _, _)| g.to_be_bytes())
        .collect();
    pdf.stream(ids.cid_to_gid, &map);
}

/// The font's PostScript name behind a subset tag derived from the glyphs used (six capital
/// letters, as PDF asks of subsets).
fn base_name(f: &rustybuzz::Face<'_>, face: usize, used: &Used) -> String {
    let ps: String = f
        .names()
        .into_iter()
        .filter(|n| n.name_id == name_id::POST_SCRIPT_NAME)
        .find_map(|n| n.to_string())
        .unwrap_or_else(|| format!("Font{face}"))
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let gids: Vec<u8> = used
        .remapper
        .remapped_gids()
        .flat_map(u16::to_be_bytes)
        .collect();
    let mut hash = xxhash_rust::xxh3::xxh3_64(&gids);
    let mut tag = String::with_capacity(7);
    for _ in 0..6 {
        tag.push(char::from(b'A' + (hash % 26) as u8));
        hash /= 26;
    }
    format!("{tag}+{ps}")
}
