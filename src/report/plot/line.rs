//! Line charts (a metric against the pruning level, one line per method): markers of a
//! distinct shape and colour per series, ±1 SE error bars where known, the dense model as
//! a dashed reference line, a legend sized to its longest entry.

use super::canvas::{
    log_ticks, marker, open, text, text_width, tick_text, ticks, title, value_text, FONT_SIZE,
    PALETTE, REFERENCE,
};
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    /// Standard error of `y` (drawn as ±1 SE).
    pub se: Option<f64>,
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
    /// Published numbers: dashed, hollow markers.
    pub dashed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A horizontal reference line (value, label), e.g. the dense model.
    pub reference: Option<(f64, String)>,
    pub log_y: bool,
}

const PLOT_W: f64 = 460.0;
const PLOT_H: f64 = 320.0;
const ROW: f64 = 20.0;

/// Data range of `v` with a margin, never empty.
fn range(v: &[f64], min_pad: f64) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(min_pad);
    (lo - pad, hi + pad)
}

impl LineChart {
    fn ty(&self, y: f64) -> f64 {
        if self.log_y {
            y.max(1e-12).log10()
        } else {
            y
        }
    }

    fn legend(&self) -> Vec<LegendEntry> {
        let mut v = Vec::new();
        if let Some((r, label)) = &self.reference {
            v.push((format!("{label} ({})", value_text(*r)), None, true));
        }
        for (i, s) in self.series.iter().enumerate() {
            v.push((s.label.clone(), Some(i), s.dashed));
        }
        v
    }

    /// The chart as a standalone SVG document.
    pub fn svg(&self) -> String {
        let legend = self.legend();
        let f = self.frame(&legend);
        let px = |x: f64| f.px(x);
        let py = |y: f64| f.y_at(self.ty(y));

        let mut s = String::new();
        open(&mut s, f.w, f.h);
        title(&mut s, f.w, &self.title);
        self.draw_axes(&mut s, &f);
        if let Some((r, _)) = &self.reference {
            let (left, right, y) = (f.left, f.right, py(*r));
            let _ = writeln!(
                s,
                r#"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="{REFERENCE}" stroke-dasharray="6 4"/>"#
            );
        }
        for (i, se) in self.series.iter().enumerate() {
            self.draw_series(&mut s, i, se, &px, &py);
        }
        draw_legend(&mut s, &f, &legend);
        s.push_str("</svg>\n");
        s
    }

    /// A y tick's text (`t` in axis units: log10 on a log axis).
    fn tick_label(&self, t: f64) -> String {
        if self.log_y {
            tick_text(10f64.powf(t), true)
        } else {
            tick_text(t, false)
        }
    }

    /// The data ranges (points with their error bars, and the reference line), the y
    /// ticks, and a plot area placed right of the widest y tick with room for the legend.
    fn frame(&self, legend: &[LegendEntry]) -> Frame {
        let points = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter())
                .filter(|p| p.x.is_finite() && p.y.is_finite())
        };
        let xs: Vec<f64> = points().map(|p| p.x).collect();
        let mut ys: Vec<f64> = points()
            .flat_map(|p| {
                let se = p.se.unwrap_or(0.0);
                [self.ty(p.y - se), self.ty(p.y + se)]
            })
            .collect();
        if let Some((r, _)) = &self.reference {
            ys.push(self.ty(*r));
        }
        let (x_lo, x_hi) = range(&xs, 0.02);
        let (y_lo, y_hi) = range(&ys, if self.log_y { 0.05 } else { 0.5 });
        let y_ticks = if self.log_y {
            log_ticks(y_lo, y_hi)
        } else {
            ticks(y_lo, y_hi, 6)
        };
        let tick_w = y_ticks
            .iter()
            .map(|t| text_width(&self.tick_label(*t), FONT_SIZE))
            .fold(0.0, f64::max);
        let left = 30.0 + tick_w + 10.0;
        let (top, right) = (44.0, left + PLOT_W);
        let bottom = top + PLOT_H;
        let legend_w = legend
            .iter()
            .map(|(l, _, _)| text_width(l, FONT_SIZE))
            .fold(0.0, f64::max);
        Frame {
            x: (x_lo, x_hi),
            y: (y_lo, y_hi),
            y_ticks,
            left,
            right,
            top,
            bottom,
            w: right + 16.0 + 30.0 + legend_w + 12.0,
            h: (bottom + 50.0).max(top + ROW * legend.len() as f64 + 20.0),
        }
    }

    /// Grid lines and tick labels on both axes, the plot frame and the axis titles.
    fn draw_axes(&self, s: &mut String, f: &Frame) {
        let (left, right, top, bottom) = (f.left, f.right, f.top, f.bottom);
        for t in ticks(f.x.0, f.x.1, 6) {
            let x = f.px(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#e5e5e5"/>"##
            );
            text(s, x, bottom + 18.0, "middle", "tick", &tick_text(t, false));
        }
        for t in &f.y_ticks {
            let y = f.y_at(*t);
            let _ = writeln!(
                s,
                r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e5e5e5"/>"##
            );
            text(s, left - 6.0, y + 4.0, "end", "tick", &self.tick_label(*t));
        }
        let _ = writeln!(
            s,
            r##"<rect x="{left:.1}" y="{top}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#333"/>"##
        );
        text(
            s,
            (left + right) / 2.0,
            bottom + 40.0,
            "middle",
            "axis",
            &self.x_label,
        );
        let mid = (top + bottom) / 2.0;
        let _ = writeln!(
            s,
            r#"<text x="16" y="{mid:.1}" text-anchor="middle" transform="rotate(-90 16 {mid:.1})" class="axis">{}</text>"#,
            super::canvas::esc(&self.y_label)
        );
    }

    fn draw_series(
        &self,
        s: &mut String,
        i: usize,
        se: &Series,
        px: &dyn Fn(f64) -> f64,
        py: &dyn Fn(f64) -> f64,
    ) {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<&Point> = se
            .points
            .iter()
            .filter(|p| p.x.is_finite() && p.y.is_finite())
            .collect();
        let dash = if se.dashed {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        if pts.len() > 1 {
            let line: Vec<String> = pts
                .iter()
                .map(|p| format!("{:.1},{:.1}", px(p.x), py(p.y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                line.join(" ")
            );
        }
        for p in &pts {
            if let Some(e) = p.se.filter(|e| e.is_finite() && *e > 0.0) {
                let (x, y0, y1) = (px(p.x), py(p.y - e), py(p.y + e));
                let _ = writeln!(
                    s,
                    r#"<path d="M{x:.1},{y0:.1}V{y1:.1}M{:.1},{y0:.1}h8M{:.1},{y1:.1}h8" stroke="{color}" stroke-width="1.2" fill="none" class="errorbar"/>"#,
                    x - 4.0,
                    x - 4.0
                );
            }
            marker(s, i, px(p.x), py(p.y), color, se.dashed);
        }
    }
}

/// A legend entry: its text, the series it stands for (`None`: the reference line) and
/// whether its line is dashed.
type LegendEntry = (String, Option<usize>, bool);

/// Where a line chart's parts go: the axis ranges (y in axis units, log10 on a log axis),
/// the y ticks, the plot area's edges and the canvas size.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
    y_ticks: Vec<f64>,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    w: f64,
    h: f64,
}

impl Frame {
    /// Horizontal position of data value `x`.
    fn px(&self, x: f64) -> f64 {
        self.left + (x - self.x.0) / (self.x.1 - self.x.0) * PLOT_W
    }

    /// Vertical position of `t` in axis units.
    fn y_at(&self, t: f64) -> f64 {
        self.bottom - (t - self.y.0) / (self.y.1 - self.y.0) * PLOT_H
    }
}

/// The legend right of the plot: per entry a line sample (with the series' marker) and
/// its text, one row each.
fn draw_legend(s: &mut String, f: &Frame, legend: &[LegendEntry]) {
    for (k, (label, series, dashed)) in legend.iter().enumerate() {
        let y = f.top + 10.0 + ROW * k as f64;
        let color = series.map_or(REFERENCE, |i| PALETTE[i % PALETTE.len()]);
        let dash = if *dashed {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        let (x0, x1) = (f.right + 16.0, f.right + 40.0);
        let _ = writeln!(
            s,
            r#"<line x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}" stroke="{color}" stroke-width="2"{dash}/>"#
        );
        if let Some(i) = series {
            marker(s, *i, (x0 + x1) / 2.0, y, color, *dashed);
        }
        text(s, x1 + 6.0, y + 4.0, "start", "legend", label);
    }
}
