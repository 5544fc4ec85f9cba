//! Horizontal bar charts for one pruning level: one labelled bar per variant (its label
//! names only what differs between the variants), ±1 SE error bars where known, the value
//! printed at the end of each bar, and the dense model as a dashed reference line.
//! Perplexity uses a log axis with round ticks (10, 100, 1k, ...).

use super::canvas::{
    log_ticks, open, text, text_width, tick_text, ticks, title, value_text, FONT_SIZE, PALETTE,
    REFERENCE,
};
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub se: Option<f64>,
    /// Colour group (e.g. the pruning method), an index into the palette.
    pub group: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub axis_label: String,
    pub bars: Vec<Bar>,
    /// A vertical reference line (value, label), e.g. the dense model.
    pub reference: Option<(f64, String)>,
    pub log: bool,
}

const PLOT_W: f64 = 420.0;
const ROW: f64 = 24.0;
const BAR: f64 = 15.0;

impl BarChart {
    fn t(&self, v: f64) -> f64 {
        if self.log {
            v.max(1e-12).log10()
        } else {
            v
        }
    }

    /// Axis range in axis units (log10 on a log axis): from 0 (linear) or the decade
    /// below the smallest value (log) to a margin past the largest value or error bar.
    fn axis(&self) -> (f64, f64) {
        let mut vals: Vec<f64> = self
            .bars
            .iter()
            .filter(|b| b.value.is_finite())
            .map(|b| b.value + b.se.unwrap_or(0.0))
            .collect();
        if let Some((r, _)) = &self.reference {
            vals.push(*r);
        }
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if self.log {
            let lo = self
                .bars
                .iter()
                .map(|b| b.value)
                .chain(self.reference.iter().map(|r| r.0))
                .filter(|v| v.is_finite() && *v > 0.0)
                .fold(f64::INFINITY, f64::min);
            if !lo.is_finite() || !hi.is_finite() {
                return (0.0, 1.0);
            }
            let lo = lo.log10().floor();
            (lo, (hi.log10() + 0.05).max(lo + 1.0))
        } else if hi.is_finite() && hi > 0.0 {
            (0.0, hi * 1.05)
        } else {
            (0.0, 1.0)
        }
    }

    fn value_label(b: &Bar) -> String {
        match b.se.filter(|e| e.is_finite()) {
            Some(e) => format!("{} ± {}", value_text(b.value), value_text(e)),
            None => value_text(b.value),
        }
    }

    /// The chart as a standalone SVG document.
    pub fn svg(&self) -> String {
        let f = self.frame();
        let mut s = String::new();
        open(&mut s, f.w, f.h);
        title(&mut s, f.w, &self.title);
        self.draw_ticks(&mut s, &f);
        // Values go on top of everything, the reference line included.
        let values = self.draw_bars(&mut s, &f);
        let (left, right, top, bottom) = (f.left, f.right, f.top, f.bottom);
        let _ = writeln!(
            s,
            r##"<line x1="{left:.1}" y1="{top}" x2="{left:.1}" y2="{bottom:.1}" stroke="#333"/>"##
        );
        let _ = writeln!(
            s,
            r##"<line x1="{left:.1}" y1="{bottom:.1}" x2="{right:.1}" y2="{bottom:.1}" stroke="#333"/>"##
        );
        self.draw_reference(&mut s, &f);
        s.push_str(&values);
        text(
            &mut s,
            (left + right) / 2.0,
            bottom + 40.0,
            "middle",
            "axis",
            &self.axis_label,
        );
        s.push_str("</svg>\n");
        s
    }

    /// The axis range, and a plot area placed right of the longest bar label with room
    /// for the longest value text.
    fn frame(&self) -> Frame {
        let (lo, hi) = self.axis();
        let label_w = self
            .bars
            .iter()
            .map(|b| text_width(&b.label, FONT_SIZE))
            .fold(0.0, f64::max);
        let value_w = self
            .bars
            .iter()
            .map(|b| text_width(&Self::value_label(b), FONT_SIZE))
            .fold(0.0, f64::max);
        let left = 12.0 + label_w + 10.0;
        let right = left + PLOT_W;
        let top = 58.0;
        let bottom = top + ROW * self.bars.len().max(1) as f64;
        Frame {
            lo,
            hi,
            left,
            right,
            top,
            bottom,
            w: right + 8.0 + value_w + 12.0,
            h: bottom + 50.0,
        }
    }

    /// Horizontal position of value `v`.
    fn px(&self, f: &Frame, v: f64) -> f64 {
        f.x_at(self.t(v))
    }

    /// Vertical grid lines at the axis ticks, with their labels below the plot.
    fn draw_ticks(&self, s: &mut String, f: &Frame) {
        let (top, bottom) = (f.top, f.bottom);
        let axis_ticks = if self.log {
            log_ticks(f.lo, f.hi)
        } else {
            ticks(f.lo, f.hi, 6)
        };
        for t in axis_ticks {
            let x = f.x_at(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom:.1}" stroke="#e5e5e5"/>"##
            );
            let v = if self.log { 10f64.powf(t) } else { t };
            text(
                s,
                x,
                bottom + 18.0,
                "middle",
                "tick",
                &tick_text(v, self.log),
            );
        }
    }

    /// Each bar's label, bar and error bar into `s`; returns the value texts (on white
    /// plates, "n/a" for a missing value), to be drawn last.
    fn draw_bars(&self, s: &mut String, f: &Frame) -> String {
        let left = f.left;
        let mut values = String::new();
        for (i, b) in self.bars.iter().enumerate() {
            let yc = f.top + ROW * (i as f64 + 0.5);
            let color = PALETTE[b.group % PALETTE.len()];
            text(s, left - 8.0, yc + 4.0, "end", "label", &b.label);
            if !b.value.is_finite() {
                text(&mut values, left + 4.0, yc + 4.0, "start", "value", "n/a");
                continue;
            }
            let x1 = self.px(f, b.value).max(left);
            let _ = writeln!(
                s,
                r#"<rect x="{left:.1}" y="{:.1}" width="{:.1}" height="{BAR}" fill="{color}" fill-opacity="0.85"/>"#,
                yc - BAR / 2.0,
                x1 - left
            );
            let mut end = x1;
            if let Some(e) = b.se.filter(|e| e.is_finite() && *e > 0.0) {
                let (a, z) = (self.px(f, b.value - e).max(left), self.px(f, b.value + e));
                let _ = writeln!(
                    s,
                    r#"<path d="M{a:.1},{yc:.1}H{z:.1}M{a:.1},{:.1}v8M{z:.1},{:.1}v8" stroke="black" stroke-width="1.2" fill="none" class="errorbar"/>"#,
                    yc - 4.0,
                    yc - 4.0
                );
                end = end.max(z);
            }
            // A white plate under the value: a halo alone lets the reference line show
            // between the glyphs.
            let label = Self::value_label(b);
            let _ = writeln!(
                values,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="16" fill="white" fill-opacity="0.9"/>"#,
                end + 4.0,
                yc - 8.0,
                text_width(&label, FONT_SIZE) + 4.0
            );
            text(&mut values, end + 6.0, yc + 4.0, "start", "value", &label);
        }
        values
    }

    /// The dashed reference line across the bars, with its label and value above the
    /// plot, right of the line unless that would leave the canvas.
    fn draw_reference(&self, s: &mut String, f: &Frame) {
        let Some((r, label)) = &self.reference else {
            return;
        };
        let x = self.px(f, *r);
        let bottom = f.bottom;
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="{REFERENCE}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
            f.top - 8.0
        );
        let note = format!("{label} {}", value_text(*r));
        let anchor = if x + 4.0 + text_width(&note, FONT_SIZE) < f.w - 4.0 {
            ("start", x + 4.0)
        } else {
            ("end", x - 4.0)
        };
        text(s, anchor.1, f.top - 10.0, anchor.0, "reference", &note);
    }
}

/// Where a bar chart's parts go: the axis range (log10 on a log axis), the plot area's
/// edges and the canvas size.
struct Frame {
    lo: f64,
    hi: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    w: f64,
    h: f64,
}

impl Frame {
    /// Horizontal position of `t` in axis units.
    fn x_at(&self, t: f64) -> f64 {
        self.left + (t - self.lo) / (self.hi - self.lo) * PLOT_W
    }
}
