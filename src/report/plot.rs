//! SVG line charts, written by hand: average accuracy and perplexity against sparsity, one
//! line per method, the dense model as a dashed reference line.

use super::common::{average, eval_sig, labels, measure, method_label, Level};
use super::paper::{same_model, PublishedRow};
use super::recovery::{recovery_cells, recovery_method, recovery_rank};
use super::{Convention, RunData};
use crate::track::names::{self, SEVEN_TASKS};
use std::collections::BTreeMap;
use std::fmt::Write;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// A chart: what [`svg`] draws.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A horizontal reference line (value, label), e.g. the dense model.
    pub reference: Option<(f64, String)>,
    pub log_y: bool,
}

/// (file name, SVG text) of every chart the runs allow: per model and evaluation setting,
/// `plot_acc_*.svg` (average accuracy) and `plot_ppl_*.svg` (WikiText-2 perplexity).
pub fn plots(
    runs: &[RunData],
    published: &[PublishedRow],
    aliases: &BTreeMap<String, String>,
    conv: Convention,
) -> Vec<(String, String)> {
    let mut groups: BTreeMap<(String, String), Vec<(f64, &RunData)>> = BTreeMap::new();
    for r in runs.iter().filter(|r| !r.is_dense()) {
        if let Some(Level::Sparsity(s)) = Level::of(r) {
            groups
                .entry((r.model(), eval_sig(r)))
                .or_default()
                .push((s, r));
        }
    }
    let per_model = |m: &str| groups.keys().filter(|(x, _)| x == m).count();
    let mut out = Vec::new();
    for (i, ((model, sig), members)) in groups.iter().enumerate() {
        let dense = runs
            .iter()
            .filter(|r| r.is_dense() && r.model() == *model && eval_sig(r) == *sig)
            .max_by(|a, b| (a.finished.as_str(), a.id).cmp(&(b.finished.as_str(), b.id)));
        let all: Vec<&RunData> = members.iter().map(|(_, r)| *r).collect();
        // Recovered runs get their own lines: "CoMe + lora".
        let labs: Vec<String> = labels(&all)
            .into_iter()
            .zip(recovery_cells(&all))
            .zip(&all)
            .map(|((lab, rec), r)| {
                if recovery_rank(&recovery_method(r)) > 0 {
                    format!("{lab} + {rec}")
                } else {
                    lab
                }
            })
            .collect();
        let tasks: Vec<String> = SEVEN_TASKS
            .iter()
            .filter(|t| {
                all.iter()
                    .chain(dense.iter())
                    .any(|r| r.metric(t, conv.metric_for(t)).is_some())
            })
            .map(|t| t.to_string())
            .collect();
        let mut acc: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut ppl: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for ((s, r), lab) in members.iter().zip(&labs) {
            let m = measure(r, conv);
            if let Some(a) = average(&m, &tasks).0 {
                acc.entry(lab.clone()).or_default().push((*s, a));
            }
            if let Some(p) = m.ppl.get(names::PPL_WIKITEXT2) {
                ppl.entry(lab.clone()).or_default().push((*s, *p));
            }
        }
        let paper_model = aliases.get(model).cloned().unwrap_or_else(|| model.clone());
        let mut pub_acc: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut pub_ppl: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for p in published
            .iter()
            .filter(|p| !p.is_dense() && same_model(&p.model, &paper_model))
        {
            let Some(s) = p.sparsity else { continue };
            let lab = format!("{} (published)", method_label(&p.method.to_lowercase()));
            if let Some(a) = p.avg {
                pub_acc.entry(lab.clone()).or_default().push((s, a));
            }
            if let Some(x) = p.ppl_wikitext2 {
                pub_ppl.entry(lab).or_default().push((s, x));
            }
        }
        let dm = dense.map(|d| measure(d, conv));
        let suffix = if per_model(model) > 1 {
            format!("_{i}")
        } else {
            String::new()
        };
        let slug: String = model
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let to_series = |m: BTreeMap<String, Vec<(f64, f64)>>, dashed: bool| -> Vec<Series> {
            m.into_iter()
                .map(|(label, mut points)| {
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series {
                        label,
                        points,
                        dashed,
                    }
                })
                .collect()
        };
        if !acc.is_empty() {
            let mut series = to_series(acc, false);
            series.extend(to_series(pub_acc, true));
            let chart = Chart {
                title: format!(
                    "{model}: average accuracy ({} tasks) vs sparsity",
                    tasks.len()
                ),
                x_label: "sparsity".into(),
                y_label: "avg accuracy (%)".into(),
                series,
                reference: dm
                    .as_ref()
                    .and_then(|m| average(m, &tasks).0)
                    .map(|a| (a, "dense".to_string())),
                log_y: false,
            };
            out.push((format!("plot_acc_{slug}{suffix}.svg"), svg(&chart)));
        }
        if !ppl.is_empty() {
            let mut series = to_series(ppl, false);
            series.extend(to_series(pub_ppl, true));
            let chart = Chart {
                title: format!("{model}: WikiText-2 perplexity vs sparsity"),
                x_label: "sparsity".into(),
                y_label: "perplexity (log scale)".into(),
                series,
                reference: dm
                    .as_ref()
                    .and_then(|m| m.ppl.get(names::PPL_WIKITEXT2).copied())
                    .map(|p| (p, "dense".to_string())),
                log_y: true,
            };
            out.push((format!("plot_ppl_{slug}{suffix}.svg"), svg(&chart)));
        }
    }
    out
}

const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// About `n` round tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
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
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
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
            .filter(|v| *v >= lo && *v <= hi)
            .collect();
        if best.len() >= 3 {
            break;
        }
    }
    best
}

fn tick_text(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Draw a chart as a standalone SVG document.
pub fn svg(c: &Chart) -> String {
    let (w, h) = (780.0, 440.0);
    let (left, right, top, bottom) = (70.0, 560.0, 44.0, 380.0);
    let ty = |y: f64| if c.log_y { y.max(1e-12).log10() } else { y };
    let xs: Vec<f64> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let mut ys: Vec<f64> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| ty(p.1)))
        .collect();
    if let Some((r, _)) = &c.reference {
        ys.push(ty(*r));
    }
    let xs_f: Vec<f64> = xs.iter().copied().filter(|v| v.is_finite()).collect();
    let ys_f: Vec<f64> = ys.iter().copied().filter(|v| v.is_finite()).collect();
    let x_max = xs_f.iter().copied().fold(0.0_f64, f64::max).max(1e-6);
    let (x_lo, x_hi) = (0.0, x_max * 1.08);
    let (mut y_lo, mut y_hi) = (
        ys_f.iter().copied().fold(f64::INFINITY, f64::min),
        ys_f.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    if !y_lo.is_finite() || !y_hi.is_finite() {
        (y_lo, y_hi) = (0.0, 1.0);
    }
    let pad = ((y_hi - y_lo) * 0.08).max(if c.log_y { 0.05 } else { 0.5 });
    (y_lo, y_hi) = (y_lo - pad, y_hi + pad);
    let px = |x: f64| left + (x - x_lo) / (x_hi - x_lo) * (right - left);
    let py = |y: f64| bottom - (ty(y) - y_lo) / (y_hi - y_lo) * (bottom - top);

    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        (left + right) / 2.0,
        esc(&c.title)
    );
    // Grid and ticks.
    for t in ticks(x_lo, x_hi, 6) {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#e5e5e5"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 18.0,
            tick_text(t)
        );
    }
    let y_ticks = if c.log_y {
        log_ticks(y_lo, y_hi)
    } else {
        ticks(y_lo, y_hi, 6)
    };
    for t in y_ticks {
        let y = bottom - (t - y_lo) / (y_hi - y_lo) * (bottom - top);
        let label = if c.log_y {
            tick_text(10f64.powf(t))
        } else {
            tick_text(t)
        };
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#e5e5e5"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{label}</text>"#,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        right - left,
        bottom - top
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (left + right) / 2.0,
        bottom + 40.0,
        esc(&c.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
        (top + bottom) / 2.0,
        (top + bottom) / 2.0,
        esc(&c.y_label)
    );
    // Reference line.
    let mut legend: Vec<(String, String, bool)> = Vec::new();
    if let Some((r, label)) = &c.reference {
        let y = py(*r);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#555" stroke-dasharray="6 4"/>"##
        );
        legend.push((
            format!("{label} ({})", tick_text((r * 100.0).round() / 100.0)),
            "#555".into(),
            true,
        ));
    }
    for (i, se) in c.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<String> = se
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        let dash = if se.dashed {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        if pts.len() > 1 {
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                pts.join(" ")
            );
        }
        for p in se
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
        {
            let fill = if se.dashed { "white" } else { color };
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{fill}" stroke="{color}" stroke-width="1.5"/>"#,
                px(p.0),
                py(p.1)
            );
        }
        legend.push((se.label.clone(), color.to_string(), se.dashed));
    }
    for (i, (label, color, dashed)) in legend.iter().enumerate() {
        let y = top + 10.0 + 20.0 * i as f64;
        let dash = if *dashed {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="{color}" stroke-width="2"{dash}/>"#,
            right + 16.0,
            right + 40.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}">{}</text>"#,
            right + 46.0,
            y + 4.0,
            esc(label)
        );
    }
    s.push_str("</svg>\n");
    s
}
