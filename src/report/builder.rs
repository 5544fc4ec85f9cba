//! Assembling one results table from runs: the dense row, our rows, the published rows,
//! their columns and the caption that states how every number was measured.

use super::common::{average, items_text, measure, method_label, task_columns, Measured};
use super::paper::{same_model, PublishedRow};
use super::table::{Col, Phase, Row, Table};
use super::{Convention, RunData};
use crate::names;

/// One of our rows: its label, its key-column values and the run it shows.
pub(super) struct Entry<'a> {
    pub label: String,
    pub keys: Vec<String>,
    pub run: &'a RunData,
}

pub(super) struct Builder<'a> {
    pub conv: Convention,
    pub dense: Option<&'a RunData>,
    /// Headers of the key columns (see [`Table::key_columns`]); the dense and published
    /// rows show "-" there.
    pub key_columns: Vec<String>,
    pub ours: Vec<Entry<'a>>,
    pub published: Vec<&'a PublishedRow>,
}

/// The columns a table shows, from what its rows measured.
struct Layout {
    /// Task columns, and the tasks the average is over.
    tasks: Vec<String>,
    avg_tasks: Vec<String>,
    ppl_cols: Vec<String>,
    /// Some row has a standard error of its average.
    has_se: bool,
    columns: Vec<Col>,
    /// The dense row's latency (speed-up columns are relative to it).
    dense_latency: Option<super::common::Latency>,
}

impl Builder<'_> {
    /// The table: rows in the order dense, `ours`, published.
    pub fn build(self, id: String, title: String, extra_caption: &str) -> Table {
        let blank = vec!["-".to_string(); self.key_columns.len()];
        let mut ours: Vec<(String, Measured)> = Vec::new();
        let mut keys: Vec<Vec<String>> = Vec::new();
        if let Some(d) = self.dense {
            ours.push(("Dense".into(), measure(d, self.conv)));
            keys.push(blank.clone());
        }
        for e in &self.ours {
            ours.push((e.label.clone(), measure(e.run, self.conv)));
            keys.push(e.keys.clone());
        }
        let layout = self.layout(&ours);
        let (mut rows, max_se) = self.our_rows(&layout, &ours, keys);
        let (published, footnotes) = self.published_rows(&layout, &blank);
        rows.extend(published);
        let caption = self.caption(&layout, &ours, max_se, extra_caption);
        Table {
            id,
            title,
            key_columns: self.key_columns,
            columns: layout.columns,
            rows,
            caption,
            footnotes,
        }
    }

    fn layout(&self, ours: &[(String, Measured)]) -> Layout {
        let (tasks, avg_tasks) = task_columns(|t| {
            ours.iter().any(|(_, m)| m.acc.contains_key(t))
                || self.published.iter().any(|p| p.tasks.contains_key(t))
        });
        let ppl_cols: Vec<String> = names::PPL_CORPORA
            .iter()
            .map(|(_, metric, _)| metric)
            .filter(|p| {
                ours.iter().any(|(_, m)| m.ppl.contains_key(**p))
                    || self.published.iter().any(|r| {
                        (**p == names::PPL_WIKITEXT2 && r.ppl_wikitext2.is_some())
                            || (**p == names::PPL_C4 && r.ppl_c4.is_some())
                    })
            })
            .map(|p| p.to_string())
            .collect();
        let has_se = ours.iter().any(|(_, m)| average(m, &avg_tasks).1.is_some());
        let mut columns: Vec<Col> = tasks.iter().map(|t| Col::Task(t.clone())).collect();
        if !avg_tasks.is_empty() {
            columns.push(Col::Avg);
            if has_se {
                columns.push(Col::AvgSe);
            }
            columns.push(Col::Retention);
        }
        columns.extend(ppl_cols.iter().map(|p| Col::Ppl(p.clone())));
        let dense_latency = self
            .dense
            .and_then(|_| ours.first())
            .and_then(|(_, m)| m.latency.clone());
        if dense_latency.is_some() && ours.iter().skip(1).any(|(_, m)| m.latency.is_some()) {
            columns.extend([Col::SpeedUp(Phase::Prefill), Col::SpeedUp(Phase::Decode)]);
        }
        Layout {
            tasks,
            avg_tasks,
            ppl_cols,
            has_se,
            columns,
            dense_latency,
        }
    }

    /// The dense row and ours, and the largest standard error of an average among them.
    fn our_rows(
        &self,
        layout: &Layout,
        ours: &[(String, Measured)],
        keys: Vec<Vec<String>>,
    ) -> (Vec<Row>, Option<f64>) {
        let dense_avg = self
            .dense
            .and_then(|_| ours.first())
            .and_then(|(_, m)| average(m, &layout.avg_tasks).0);
        let mut rows = Vec::new();
        let mut max_se: Option<f64> = None;
        for ((label, m), keys) in ours.iter().zip(keys) {
            let (avg, se) = average(m, &layout.avg_tasks);
            if let Some(s) = se {
                max_se = Some(max_se.map_or(s, |x: f64| x.max(s)));
            }
            let cells = layout
                .columns
                .iter()
                .map(|c| match c {
                    Col::Task(t) => m.acc.get(t).map(|v| 100.0 * v.0),
                    Col::Avg => avg,
                    Col::AvgSe => se,
                    Col::Retention => match (avg, dense_avg) {
                        (Some(a), Some(d)) if d > 0.0 => Some(100.0 * a / d),
                        _ => None,
                    },
                    Col::Ppl(p) => m.ppl.get(p).copied(),
                    Col::SpeedUp(phase) => match (&m.latency, &layout.dense_latency) {
                        (Some(l), Some(d)) => l.speedup(d, *phase),
                        _ => None,
                    },
                    Col::At(..)
                    | Col::RecoverySeconds
                    | Col::DeltaAvg
                    | Col::Sd(_)
                    | Col::Seeds
                    | Col::PeakMemory { .. } => None,
                })
                .collect();
            rows.push(Row {
                label: label.clone(),
                keys,
                source: None,
                cells,
            });
        }
        (rows, max_se)
    }

    /// The published rows, each citing its source by footnote number, and the footnotes.
    fn published_rows(&self, layout: &Layout, blank: &[String]) -> (Vec<Row>, Vec<String>) {
        let avg_tasks = &layout.avg_tasks;
        let mut rows = Vec::new();
        let mut footnotes: Vec<String> = Vec::new();
        for p in &self.published {
            let cite = p.citation();
            let k = match footnotes.iter().position(|f| *f == cite) {
                Some(i) => i + 1,
                None => {
                    footnotes.push(cite);
                    footnotes.len()
                }
            };
            // As reported, else computed from the averaged tasks when all are reported.
            let avg_of = |r: &PublishedRow| {
                let v: Option<Vec<f64>> =
                    avg_tasks.iter().map(|t| r.tasks.get(t).copied()).collect();
                r.avg.or(v
                    .filter(|v| !v.is_empty())
                    .map(|v| v.iter().sum::<f64>() / v.len() as f64))
            };
            let avg = avg_of(p);
            // Retention against the same source's dense row, unless the source states it.
            let dense_avg = self
                .published
                .iter()
                .find(|d| d.is_dense() && d.source == p.source && same_model(&d.model, &p.model))
                .and_then(|d| avg_of(d));
            let retention = p.retention.or(match (avg, dense_avg) {
                (Some(a), Some(d)) if d > 0.0 && !p.is_dense() => Some(100.0 * a / d),
                _ => None,
            });
            let cells = layout
                .columns
                .iter()
                .map(|c| match c {
                    Col::Task(t) => p.tasks.get(t).copied(),
                    Col::Avg => avg,
                    Col::AvgSe => None,
                    Col::Retention => retention,
                    Col::Ppl(x) if x == names::PPL_WIKITEXT2 => p.ppl_wikitext2,
                    Col::Ppl(x) if x == names::PPL_C4 => p.ppl_c4,
                    Col::Ppl(_)
                    | Col::At(..)
                    | Col::RecoverySeconds
                    | Col::DeltaAvg
                    | Col::SpeedUp(_)
                    | Col::Sd(_)
                    | Col::Seeds
                    | Col::PeakMemory { .. } => None,
                })
                .collect();
            let label = match p.sparsity {
                Some(s) if !p.is_dense() => {
                    format!("{} (s={s})", method_label(&p.method.to_lowercase()))
                }
                _ => method_label(&p.method.to_lowercase()),
            };
            rows.push(Row {
                label,
                keys: blank.to_vec(),
                source: Some(k),
                cells,
            });
        }
        (rows, footnotes)
    }

    /// How every number of the table was measured.
    fn caption(
        &self,
        layout: &Layout,
        ours: &[(String, Measured)],
        max_se: Option<f64>,
        extra_caption: &str,
    ) -> String {
        let Layout {
            tasks,
            avg_tasks,
            ppl_cols,
            has_se,
            columns,
            dense_latency,
        } = layout;
        let mut caption = String::new();
        if !extra_caption.is_empty() {
            caption.push_str(extra_caption);
            caption.push(' ');
        }
        if !tasks.is_empty() {
            caption.push_str(&format!("{}.", self.conv.describe()));
        }
        let items = items_text(ours, tasks);
        if !items.is_empty() {
            caption.push_str(&format!(" Items per task: {items}."));
        }
        if !avg_tasks.is_empty() {
            let labels: Vec<&str> = avg_tasks.iter().map(|t| names::task_label(t)).collect();
            caption.push_str(&format!(
                " Avg: mean accuracy over the {} tasks shown ({}), MMLU excluded",
                avg_tasks.len(),
                labels.join(", ")
            ));
            if *has_se {
                caption.push_str(&format!(
                    "; ±Avg: its standard error, sqrt(Σ se_i²)/{} from the per-task standard errors",
                    avg_tasks.len()
                ));
            }
            match max_se {
                Some(s) => caption.push_str(&format!(", at most {s:.2} points here.")),
                None => caption.push('.'),
            }
            caption.push_str(" Ret.%: Avg as a percentage of the dense Avg.");
        }
        if !ppl_cols.is_empty() {
            let settings: std::collections::BTreeSet<&str> = ours
                .iter()
                .flat_map(|(_, m)| m.ppl_setting.values().map(|s| s.as_str()))
                .filter(|s| !s.is_empty())
                .collect();
            caption.push_str(" Perplexity: non-overlapping windows of the test text");
            if !settings.is_empty() {
                let list: Vec<&str> = settings.into_iter().collect();
                caption.push_str(&format!(" ({})", list.join("; ")));
            }
            caption.push('.');
            if ppl_cols.iter().any(|p| p == names::PPL_WIKITEXT2_VAL) {
                caption.push_str(" Val PPL (same windows): the last 400 rows of the WikiText-2 train prefix, which recovery never trains on (its held-out validation text).");
            }
            if ppl_cols.iter().any(|p| p == names::PPL_TASKS_OOD) {
                caption.push_str(" OOD PPL: HellaSwag and PIQA gold answers, text of other domains than any training text.");
            }
        }
        if let Some(l) = columns
            .iter()
            .any(|c| matches!(c, Col::SpeedUp(_)))
            .then_some(dense_latency.as_ref())
            .flatten()
        {
            caption.push_str(&super::common::latency_caption(&l.context));
        }
        if !self.published.is_empty() {
            caption.push_str(
                " Published rows are copied from their sources (their own evaluation settings and metric; Avg and Ret.% as reported or, if absent, computed from the tasks shown).",
            );
        }
        caption.trim().to_string()
    }
}
