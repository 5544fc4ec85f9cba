//! What every chart shares: the font (DejaVu Sans, embedded, so a chart measures and
//! renders the same on every machine), text widths from its metrics, the colour-blind
//! safe palette and marker shapes, axis ticks and the SVG fragments they draw.

use std::fmt::Write;
use std::sync::OnceLock;

pub const FONT_FAMILY: &str = "DejaVu Sans";
pub const FONT_SIZE: f64 = 12.0;
pub const TITLE_SIZE: f64 = 14.0;

/// Paul Tol's "muted" scheme: nine colours told apart under the common colour-vision
/// deficiencies. A chart never shows more series than this (see `MAX_SERIES`).
pub const PALETTE: [&str; 9] = [
    "#332288", "#CC6677", "#117733", "#DDCC77", "#88CCEE", "#882255", "#44AA99", "#999933",
    "#AA4499",
];
pub const MAX_SERIES: usize = PALETTE.len();
/// Reference lines (the dense model).
pub const REFERENCE: &str = "#555555";

pub fn font_data() -> &'static [u8] {
    dejavu::sans::regular()
}

fn face() -> Option<&'static ttf_parser::Face<'static>> {
    static FACE: OnceLock<Option<ttf_parser::Face<'static>>> = OnceLock::new();
    FACE.get_or_init(|| ttf_parser::Face::parse(font_data(), 0).ok())
        .as_ref()
}

/// Width of `text` at `size` px in the embedded font (a conservative estimate if the
/// font cannot be read).
pub fn text_width(text: &str, size: f64) -> f64 {
    let Some(f) = face() else {
        return 0.62 * size * text.chars().count() as f64;
    };
    let em = f.units_per_em() as f64;
    let units: f64 = text
        .chars()
        .map(|c| {
            f.glyph_index(c)
                .and_then(|g| f.glyph_hor_advance(g))
                .map_or(0.6 * em, |a| a as f64)
        })
        .sum();
    units / em * size
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// About `n` round tick values covering [lo, hi].
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !lo.is_finite() || !hi.is_finite() || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut v = first;
    while v <= hi + step * 1e-9 && out.len() < 50 {
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    out
}

/// Ticks of a log10 axis (positions in log10 units) at round values: powers of ten, else
/// 1-2-5, else 1 to 9 per decade, whichever first gives at least three.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !lo.is_finite() || !hi.is_finite() || hi <= lo {
        return vec![lo];
    }
    let sets: [&[f64]; 3] = [
        &[1.0],
        &[1.0, 2.0, 5.0],
        &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    ];
    let mut best = Vec::new();
    for set in sets {
        best = ((lo.floor() as i64)..=(hi.ceil() as i64))
            .flat_map(|k| set.iter().map(move |m| (m * 10f64.powi(k as i32)).log10()))
            .filter(|v| *v >= lo - 1e-9 && *v <= hi + 1e-9)
            .collect();
        if best.len() >= 3 {
            break;
        }
    }
    best
}

/// A tick value as written on an axis: at most four decimals, no trailing zeros; on a log
/// axis thousands as "1k", "20k", millions as "1M".
pub fn tick_text(v: f64, log: bool) -> String {
    if log && v >= 1000.0 {
        let (d, unit) = if v >= 1e6 { (1e6, "M") } else { (1e3, "k") };
        return format!("{}{unit}", tick_text(v / d, false));
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// A value as printed beside a bar or in a legend: two decimals below 1000, else whole.
pub fn value_text(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The marker of series `i` (shape told apart without colour), centred at (x, y).
pub fn marker(s: &mut String, i: usize, x: f64, y: f64, color: &str, hollow: bool) {
    let fill = if hollow { "white" } else { color };
    let r = 4.0;
    let style = format!(r#"fill="{fill}" stroke="{color}" stroke-width="1.5""#);
    let _ = match i % 5 {
        0 => writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r}" {style}/>"#),
        1 => writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="{}" height="{}" {style}/>"#,
            x - r,
            y - r,
            2.0 * r,
            2.0 * r
        ),
        2 => writeln!(
            s,
            r#"<polygon points="{x:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" {style}/>"#,
            y - r - 1.0,
            x + r + 1.0,
            y + r,
            x - r - 1.0,
            y + r
        ),
        3 => writeln!(
            s,
            r#"<polygon points="{x:.1},{:.1} {:.1},{y:.1} {x:.1},{:.1} {:.1},{y:.1}" {style}/>"#,
            y - r - 1.0,
            x + r + 1.0,
            y + r + 1.0,
            x - r - 1.0
        ),
        _ => writeln!(
            s,
            r#"<polygon points="{x:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" {style}/>"#,
            y + r + 1.0,
            x + r + 1.0,
            y - r,
            x - r - 1.0,
            y - r
        ),
    };
}

/// The document's opening: size, font and a white background.
pub fn open(s: &mut String, w: f64, h: f64) {
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="{FONT_FAMILY}" font-size="{FONT_SIZE}">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{w:.0}" height="{h:.0}" fill="white"/>"#
    );
}

/// Text classes drawn with a halo.
const HALO: [&str; 2] = ["value", "reference"];

/// Text at (x, y) (baseline), anchored `start`, `middle` or `end`; `class` marks legend
/// entries and the like for readers of the SVG.
pub fn text(s: &mut String, x: f64, y: f64, anchor: &str, class: &str, body: &str) {
    let halo = HALO.contains(&class);
    let mut class = if class.is_empty() {
        String::new()
    } else {
        format!(r#" class="{class}""#)
    };
    if halo {
        // A white outline under the glyphs keeps numbers readable over grid and
        // reference lines.
        class.push_str(
            r#" stroke="white" stroke-width="3" stroke-linejoin="round" paint-order="stroke""#,
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}"{class}>{}</text>"#,
        esc(body)
    );
}

/// The title, centred over the canvas, at most `width` wide (shrunk to fit).
pub fn title(s: &mut String, w: f64, body: &str) {
    let size = TITLE_SIZE.min(TITLE_SIZE * (w - 20.0) / text_width(body, TITLE_SIZE).max(1.0));
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="24" text-anchor="middle" font-size="{size:.1}" class="title">{}</text>"#,
        w / 2.0,
        esc(body)
    );
}
