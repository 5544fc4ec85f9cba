//! Tables and plots from a store filled with synthetic runs; expected numbers are worked
//! out by hand in the comments.

use come_repro::distill::{Losses, RecoveryConfig, RecoveryMethod};
use come_repro::experiment::{EvalConfig, Experiment};
use come_repro::grid::RunSpec;
use come_repro::prune::{MergeOp, Method, PruneConfig};
use come_repro::report::{self, paper, Convention, ReportOptions};
use come_repro::track::{Claim, Metric, Store};
use std::path::Path;

const TASKS: [&str; 7] = [
    "boolq",
    "piqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
];
/// Dense (acc, acc_norm) per task, in the order of TASKS; BoolQ and WinoGrande have no acc_norm.
const DENSE: [(f64, Option<f64>); 7] = [
    (0.80, None),
    (0.70, Some(0.72)),
    (0.50, Some(0.60)),
    (0.60, None),
    (0.70, Some(0.66)),
    (0.40, Some(0.44)),
    (0.30, Some(0.34)),
];

fn spec(prune: Option<(Method, MergeOp, f64)>) -> RunSpec {
    let exp = Experiment {
        model: "m".into(),
        prune: prune.map(|(method, merge, s)| PruneConfig {
            method,
            merge,
            sparsity: Some(s),
            ..Default::default()
        }),
        eval: EvalConfig {
            limit: Some(100),
            ..Default::default()
        },
        ..Default::default()
    };
    RunSpec::new("r", "main", exp)
}

/// Every accuracy `drop` below the dense one; stderr 0.01; 100 items; the given ppl.
fn metrics(drop: f64, ppl: f64) -> Vec<Metric> {
    let mut out = Vec::new();
    for (t, (acc, norm)) in TASKS.iter().zip(DENSE) {
        out.push(Metric::new(*t, "acc", acc - drop).with_stderr(0.01));
        if let Some(n) = norm {
            out.push(Metric::new(*t, "acc_norm", n - drop).with_stderr(0.01));
        }
        out.push(Metric::new(*t, "n", 100.0));
    }
    out.push(Metric::new("wikitext2", "ppl_wikitext2", ppl).with_context("seqlen=2048"));
    out.push(Metric::new("wikitext2", "n", 8.0));
    out
}

fn finish(store: &Store, r: &RunSpec, m: &[Metric]) -> i64 {
    let Claim::Run(id) = store.claim(r, true).unwrap() else {
        panic!("claim")
    };
    store.finish(id, m, &[]).unwrap();
    id
}

fn filled_store(dir: &Path) -> Store {
    let store = Store::open(dir.join("s.sqlite")).unwrap();
    finish(&store, &spec(None), &metrics(0.0, 5.5));
    let come = spec(Some((Method::Come, MergeOp::Concat, 0.3)));
    // First finished with other numbers, then re-run: only the latest counts.
    finish(&store, &come, &metrics(0.3, 99.0));
    finish(&store, &come, &metrics(0.1, 9.0));
    finish(
        &store,
        &spec(Some((Method::ShortGpt, MergeOp::Concat, 0.3))),
        &metrics(0.2, 20.0),
    );
    finish(
        &store,
        &spec(Some((Method::Come, MergeOp::Linear, 0.3))),
        &metrics(0.15, 12.0),
    );
    finish(
        &store,
        &spec(Some((Method::Come, MergeOp::Concat, 0.2))),
        &metrics(0.05, 7.0),
    );
    // Not finished: never in a table.
    let failed = spec(Some((Method::Sleb, MergeOp::Concat, 0.3)));
    let Claim::Run(id) = store.claim(&failed, false).unwrap() else {
        panic!()
    };
    store.fail(id, "boom").unwrap();
    store
        .claim(&spec(Some((Method::Reverse, MergeOp::Concat, 0.3))), false)
        .unwrap();
    store
}

fn published(dir: &Path) -> Vec<paper::PublishedRow> {
    let p = dir.join("paper");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("rows.csv"),
        "model,method,sparsity,boolq,piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa,avg,retention,ppl_wikitext2,convention,source,location,note\n\
         M,dense,,90,80,70,60,50,40,30,,,5.47,acc,Paper A,Tab. 1,\n\
         M,shortgpt,0.3,,,,,,,,50,,,acc,Paper A,Tab. 2,avg over its own tasks\n",
    )
    .unwrap();
    paper::load_dir(&p).unwrap()
}

fn md_rows(md: &str) -> Vec<Vec<String>> {
    md.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Method"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn main_table_values_retention_and_caption() {
    let d = tempfile::tempdir().unwrap();
    let store = filled_store(d.path());
    let opts = ReportOptions {
        out_dir: d.path().join("tables"),
        convention: Convention::Mixed,
        published: published(d.path()),
        ..Default::default()
    };
    let summary = report::write_report(&store, &opts).unwrap();
    assert_eq!(summary.runs, 5);
    let md = std::fs::read_to_string(d.path().join("tables/main_m_s0.3.md")).unwrap();
    let header = md.lines().find(|l| l.starts_with("| Method")).unwrap();
    assert_eq!(
        header,
        "| Method | Source | BoolQ | PIQA | HellaSwag | WinoGrande | ARC-e | ARC-c | OBQA | Avg | ±Avg | Ret.% | Wiki2 PPL |"
    );
    // Mixed: acc_norm for HellaSwag, ARC-c, OBQA. Dense: 80 70 60 60 70 44 34, sum 418,
    // avg 59.714; SE = sqrt(7 * 1^2) / 7 = 0.378. CoMe (-10 points everywhere): 348 / 7 =
    // 49.714, retention 49.714 / 59.714 = 83.25%. ShortGPT (-20): 39.714, 66.51%.
    // CoMe linear (-15): 44.714, 74.88%.
    let want: Vec<Vec<&str>> = vec![
        vec![
            "Dense", "ours", "80.00", "70.00", "60.00", "60.00", "70.00", "44.00", "34.00",
            "59.71", "0.38", "100.0", "5.50",
        ],
        vec![
            "CoMe (merge=concat)",
            "ours",
            "70.00",
            "60.00",
            "50.00",
            "50.00",
            "60.00",
            "34.00",
            "24.00",
            "49.71",
            "0.38",
            "83.3",
            "9.00",
        ],
        vec![
            "CoMe (merge=linear)",
            "ours",
            "65.00",
            "55.00",
            "45.00",
            "45.00",
            "55.00",
            "29.00",
            "19.00",
            "44.71",
            "0.38",
            "74.9",
            "12.00",
        ],
        vec![
            // `merge` varies among the runs but ShortGPT never merges: not in its label.
            "ShortGPT", "ours", "60.00", "50.00", "40.00", "40.00", "50.00", "24.00", "14.00",
            "39.71", "0.38", "66.5", "20.00",
        ],
        // Published: Avg as reported; retention against the same source's dense Avg, which
        // is computed from its tasks (90+80+70+60+50+40+30)/7 = 60: 50/60 = 83.3%.
        vec![
            "Dense",
            "published [1]",
            "90.00",
            "80.00",
            "70.00",
            "60.00",
            "50.00",
            "40.00",
            "30.00",
            "60.00",
            "-",
            "-",
            "5.47",
        ],
        vec![
            "ShortGPT (s=0.3)",
            "published [2]",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "50.00",
            "-",
            "83.3",
            "-",
        ],
    ];
    let got = md_rows(&md);
    assert_eq!(
        got,
        want.iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    assert!(
        md.contains("acc_norm for HellaSwag, ARC-c and OBQA, acc elsewhere"),
        "{md}"
    );
    assert!(md.contains("Items per task: 100 each."), "{md}");
    assert!(
        md.contains(
            "Perplexity: non-overlapping windows of the test text (seqlen=2048, 8 windows)."
        ),
        "{md}"
    );
    assert!(
        md.contains("sqrt(Σ se_i²)/7") && md.contains("at most 0.38 points"),
        "{md}"
    );
    assert!(md.contains("first 100 documents per task"), "{md}");
    assert!(md.contains("[1] Paper A, Tab. 1; metric: acc"), "{md}");
    assert!(
        md.contains("[2] Paper A, Tab. 2; metric: acc; avg over its own tasks"),
        "{md}"
    );
    // The published dense retention is not shown (it is the reference) but the pruned one is
    // derived from the same source's dense row.
    let tables = report::build(&report::load_runs(&store).unwrap(), &opts).0;
    let main = tables.iter().find(|t| t.id == "main_m_s0.3").unwrap();
    let pub_ret = main
        .rows
        .iter()
        .find(|r| r.label == "ShortGPT (s=0.3)")
        .unwrap();
    let ret_col = main
        .columns
        .iter()
        .position(|c| c.header() == "Ret.%")
        .unwrap();
    assert!((pub_ret.cells[ret_col].unwrap() - 100.0 * 50.0 / 60.0).abs() < 1e-9);
    assert!(
        (main.cell("CoMe (merge=concat)", "Ret.%").unwrap() - 100.0 * 348.0 / 418.0).abs() < 1e-9
    );

    // CSV and LaTeX carry the same table.
    let csv = std::fs::read_to_string(d.path().join("tables/main_m_s0.3.csv")).unwrap();
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .starts_with("method,source,BoolQ,PIQA"));
    assert!(
        csv.contains("Dense,ours,80.0,70.0,60.0,60.0,70.0,44.0,34.0,59.71428571428"),
        "{csv}"
    );
    let tex = std::fs::read_to_string(d.path().join("tables/main_m_s0.3.tex")).unwrap();
    assert!(
        tex.contains("\\begin{tabular}{llrrrrrrrrrrr}")
            && tex.contains("CoMe (merge=concat) & ours & 70.00"),
        "{tex}"
    );
    assert!(tex.contains("acc\\_norm"), "{tex}");
    // Another sparsity gets its own table.
    let s2 = std::fs::read_to_string(d.path().join("tables/main_m_s0.2.md")).unwrap();
    assert_eq!(md_rows(&s2).len(), 2 + 1); // dense, CoMe, published dense
}

#[test]
fn conventions_change_the_metric_and_caption() {
    let d = tempfile::tempdir().unwrap();
    let store = filled_store(d.path());
    let runs = report::load_runs(&store).unwrap();
    let avg_of = |conv| {
        let opts = ReportOptions {
            convention: conv,
            ..Default::default()
        };
        let tables = report::build(&runs, &opts).0;
        let t = tables.into_iter().find(|t| t.id == "main_m_s0.3").unwrap();
        (
            t.cell("Dense", "Avg").unwrap(),
            t.cell("Dense", "HellaSwag").unwrap(),
            t.caption,
        )
    };
    // acc: 80 70 50 60 70 40 30 = 400 / 7.
    let (a, h, cap) = avg_of(Convention::Acc);
    assert!((a - 400.0 / 7.0).abs() < 1e-9 && (h - 50.0).abs() < 1e-9);
    assert!(cap.contains("acc (plain accuracy) for every task"));
    // acc_norm wherever defined: 80 72 60 60 66 44 34 = 416 / 7.
    let (a, h, cap) = avg_of(Convention::AccNorm);
    assert!((a - 416.0 / 7.0).abs() < 1e-9 && (h - 60.0).abs() < 1e-9);
    assert!(cap.contains("acc_norm where lm-eval defines it"));
    assert_eq!(Convention::parse("acc_norm").unwrap(), Convention::AccNorm);
    assert!(Convention::parse("accuracy").is_err());
}

#[test]
fn ablation_tables_vary_one_key() {
    let d = tempfile::tempdir().unwrap();
    let store = filled_store(d.path());
    let runs = report::load_runs(&store).unwrap();
    let (tables, _) = report::build(&runs, &ReportOptions::default());
    let ids: Vec<&str> = tables.iter().map(|t| t.id.as_str()).collect();
    let abl: Vec<&&str> = ids.iter().filter(|i| i.starts_with("ablation")).collect();
    // Only CoMe at 0.3 has two merge values with everything else equal.
    assert_eq!(abl, [&"ablation_merge_m_come_s0.3"], "{ids:?}");
    let t = tables
        .iter()
        .find(|t| t.id == "ablation_merge_m_come_s0.3")
        .unwrap();
    let labels: Vec<&str> = t.rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["Dense", "merge=concat", "merge=linear"]);
    assert!((t.cell("merge=linear", "Avg").unwrap() - 313.0 / 7.0).abs() < 1e-9);
    assert!(t.caption.contains("Rows differ only in `prune.merge`"));
}

#[test]
fn same_titled_ablations_name_what_they_fix() {
    let d = tempfile::tempdir().unwrap();
    let store = filled_store(d.path());
    // The merge ablation again with folded norms: two merge tables of one title, and two
    // norm tables (one per merge).
    for (merge, drop) in [(MergeOp::Concat, 0.12), (MergeOp::Linear, 0.18)] {
        let mut s = spec(Some((Method::Come, merge, 0.3)));
        if let Some(p) = s.experiment.prune.as_mut() {
            p.norm = come_repro::prune::merge::NormMode::Fold;
        }
        let s = RunSpec::new("r", "main", s.experiment);
        finish(&store, &s, &metrics(drop, 10.0));
    }
    let runs = report::load_runs(&store).unwrap();
    let (tables, _) = report::build(&runs, &ReportOptions::default());
    let mut titles: Vec<&str> = tables
        .iter()
        .filter(|t| t.id.starts_with("ablation"))
        .map(|t| t.title.as_str())
        .collect();
    titles.sort();
    assert_eq!(
        titles,
        [
            "Ablation of merge: m, CoMe, sparsity 0.3 (prune.norm=fold)",
            "Ablation of merge: m, CoMe, sparsity 0.3 (prune.norm=mean)",
            "Ablation of norm: m, CoMe, sparsity 0.3 (prune.merge=concat)",
            "Ablation of norm: m, CoMe, sparsity 0.3 (prune.merge=linear)",
        ]
    );
}

#[test]
fn published_rows_load_and_errors_name_the_line() {
    let d = tempfile::tempdir().unwrap();
    let rows = published(d.path());
    assert_eq!(rows.len(), 2);
    assert!(rows[0].is_dense() && rows[0].ppl_wikitext2 == Some(5.47) && rows[0].tasks.len() == 7);
    assert_eq!(rows[1].sparsity, Some(0.3));
    let p = d.path().join("bad.csv");
    std::fs::write(&p, "model,method,boolq,source\nM,dense,eighty,X\n").unwrap();
    let e = paper::load_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.csv:2") && e.contains("boolq") && e.contains("eighty"),
        "{e}"
    );
    std::fs::write(&p, "model,method,bolq,source\nM,dense,80,X\n").unwrap();
    let e = paper::load_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.csv:1") && e.contains("unknown column `bolq`"),
        "{e}"
    );
    assert!(paper::same_model("LLaMA-2-7B", "llama2-7b"));
    // The checked-in published numbers parse.
    let shipped = paper::load_dir(Path::new("paper")).unwrap();
    assert!(
        shipped.iter().any(|r| r.source.contains("2510.15304")),
        "paper/ must cite the CoMe paper"
    );
    assert!(shipped.iter().all(|r| !r.source.is_empty()));
}

/// Tag balance of an XML document: every opened element is closed, in order.
fn well_formed(xml: &str) -> Result<usize, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml;
    let mut elements = 0;
    while let Some(i) = rest.find('<') {
        let after = &rest[i + 1..];
        let j = after.find('>').ok_or("unterminated tag")?;
        let tag = &after[..j];
        if !tag.matches('"').count().is_multiple_of(2) {
            return Err(format!("unbalanced quotes in <{tag}>"));
        }
        if tag.starts_with('?') || tag.starts_with('!') {
        } else if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
            if open != name.trim() {
                return Err(format!("<{open}> closed by </{name}>"));
            }
        } else {
            elements += 1;
            let name = tag
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches('/')
                .to_string();
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        let text = &after[j + 1..];
        let next = text.find('<').unwrap_or(text.len());
        if text[..next].contains('&') && !text[..next].contains(';') {
            return Err("bare & in text".into());
        }
        rest = text;
    }
    if stack.is_empty() {
        Ok(elements)
    } else {
        Err(format!("unclosed {stack:?}"))
    }
}

#[test]
fn plots_are_well_formed_svg() {
    let d = tempfile::tempdir().unwrap();
    let store = filled_store(d.path());
    let opts = ReportOptions {
        out_dir: d.path().join("t"),
        published: published(d.path()),
        ..Default::default()
    };
    let summary = report::write_report(&store, &opts).unwrap();
    for name in ["plot_acc_m.svg", "plot_ppl_m.svg"] {
        let p = d.path().join("t").join(name);
        assert!(summary.files.contains(&p), "{name} not written");
        let svg = std::fs::read_to_string(&p).unwrap();
        let n = well_formed(&svg).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(n > 20);
        assert!(
            svg.starts_with("<?xml") && svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\"")
        );
        // CoMe (concat) has points at 0.2 and 0.3: one polyline; the legend names it.
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("CoMe (merge=concat)"));
        assert!(svg.contains("dense ("));
    }
    let acc = std::fs::read_to_string(d.path().join("t/plot_acc_m.svg")).unwrap();
    assert!(acc.contains("ShortGPT (published)"));
    assert!(well_formed("<a><b></a></b>").is_err() && well_formed("<a>").is_err());
    // The index links everything.
    let index = std::fs::read_to_string(d.path().join("t/index.md")).unwrap();
    assert!(
        index.contains("![plot_acc_m.svg](plot_acc_m.png)")
            && index.contains("### m, sparsity 0.3")
    );
}

#[test]
fn perplexity_only_tables_claim_no_zero_shot_setting() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s.sqlite")).unwrap();
    let ppl_only = |prune| {
        let mut r = spec(prune);
        r.experiment.eval = EvalConfig {
            tasks: vec![],
            ..Default::default()
        };
        r = RunSpec::new("r", "main", r.experiment);
        r
    };
    let m = |p: f64| {
        vec![
            Metric::new("wikitext2", "ppl_wikitext2", p).with_context("seqlen=2048"),
            Metric::new("wikitext2", "n", 8.0),
        ]
    };
    finish(&store, &ppl_only(None), &m(5.5));
    finish(
        &store,
        &ppl_only(Some((Method::Come, MergeOp::Concat, 0.3))),
        &m(9.0),
    );
    let opts = ReportOptions {
        out_dir: d.path().join("tables"),
        ..Default::default()
    };
    report::write_report(&store, &opts).unwrap();
    let md = std::fs::read_to_string(d.path().join("tables/main_m_s0.3.md")).unwrap();
    let caption = md.lines().last().unwrap();
    assert_eq!(
        caption, "Perplexity: non-overlapping windows of the test text (seqlen=2048, 8 windows).",
        "{md}"
    );
}

#[test]
fn sweep_table_puts_every_sparsity_in_one_row() {
    let d = tempfile::tempdir().unwrap();
    let store = filled_store(d.path());
    let opts = ReportOptions {
        out_dir: d.path().join("tables"),
        convention: Convention::Mixed,
        ..Default::default()
    };
    report::write_report(&store, &opts).unwrap();
    let md = std::fs::read_to_string(d.path().join("tables/sweep_m.md")).unwrap();
    let header = md.lines().find(|l| l.starts_with("| Method")).unwrap();
    assert_eq!(
        header,
        "| Method | Source | Wiki2 PPL @ 20% | Wiki2 PPL @ 30% | Avg @ 20% | Ret.% @ 20% | Avg @ 30% | Ret.% @ 30% |"
    );
    // Dense avg 59.714 (see main_table_values...); CoMe concat at 20% is 5 points down
    // (54.714, 91.6%), at 30% 10 down (49.714, 83.3%); ShortGPT ran at 30% only.
    let rows = md_rows(&md);
    let row = |label: &str| rows.iter().find(|r| r[0] == label).unwrap().clone();
    assert_eq!(
        row("Dense")[2..],
        ["5.50", "5.50", "59.71", "100.0", "59.71", "100.0"]
    );
    assert_eq!(
        row("CoMe (merge=concat)")[2..],
        ["7.00", "9.00", "54.71", "91.6", "49.71", "83.3"]
    );
    assert_eq!(
        row("ShortGPT")[2..],
        ["-", "20.00", "-", "-", "39.71", "66.5"]
    );
    assert!(md.contains("items per task: 100 each"), "{md}");
}

// ---------------------------------------------------------------------------------------
// The recovery axis.

fn recovery(method: RecoveryMethod, loss: &str) -> RecoveryConfig {
    RecoveryConfig {
        method: come_repro::distill::Recovery::of(method),
        loss: Losses::parse(loss).unwrap(),
        tokens: 4096,
        seqlen: 256,
        ..Default::default()
    }
}

/// Finish a pruned run recovered with `rec`.
fn finish_recovered(
    store: &Store,
    prune: (Method, MergeOp, f64),
    rec: &RecoveryConfig,
    m: &[Metric],
) -> i64 {
    let mut exp = spec(Some(prune)).experiment;
    exp.recovery = rec.clone();
    let r = RunSpec::new("r", "main", exp);
    // The store sees the loss as a table of weights: `recovery.loss.mse`, ...
    assert!(r.params().keys().any(|k| k.starts_with("recovery.loss.")));
    finish(store, &r, m)
}

/// `metrics` plus what a recovery stage records.
fn recovered_metrics(drop: f64, ppl: f64, seconds: f64) -> Vec<Metric> {
    let mut m = metrics(drop, ppl);
    m.push(Metric::new("", "recovery_seconds", seconds));
    m.push(Metric::new("", "recovery_tokens", 4096.0));
    m.push(Metric::new("", "recovery_tokens_per_s", 4096.0 / seconds));
    for layer in [3, 4] {
        m.push(Metric::new("", "distill_loss", 0.1).with_context(format!("layer={layer}")));
        m.push(Metric::new("", "distill_val_loss", 0.2).with_context(format!("layer={layer}")));
    }
    m
}

/// Dense, CoMe and ShortGPT at 30 %, each without recovery, hierarchical and lora.
fn recovery_store(dir: &Path) -> Store {
    let store = Store::open(dir.join("s.sqlite")).unwrap();
    finish(&store, &spec(None), &metrics(0.0, 5.5));
    let come = (Method::Come, MergeOp::Concat, 0.3);
    let short = (Method::ShortGpt, MergeOp::Concat, 0.3);
    // Recovered runs first: the table order does not follow the store order.
    let hier = recovery(RecoveryMethod::Hierarchical, "mse");
    let lora = recovery(RecoveryMethod::Lora, "mse");
    finish_recovered(&store, short, &lora, &recovered_metrics(0.15, 14.0, 30.0));
    finish_recovered(&store, come, &lora, &recovered_metrics(0.08, 8.0, 25.0));
    finish_recovered(&store, come, &hier, &recovered_metrics(0.06, 7.0, 12.5));
    finish_recovered(&store, short, &hier, &recovered_metrics(0.12, 12.0, 20.0));
    finish(&store, &spec(Some(come)), &metrics(0.1, 9.0));
    finish(&store, &spec(Some(short)), &metrics(0.2, 20.0));
    store
}

#[test]
fn recovery_table_pairs_each_method_with_and_without_recovery() {
    let d = tempfile::tempdir().unwrap();
    let store = recovery_store(d.path());
    let opts = ReportOptions {
        out_dir: d.path().join("tables"),
        convention: Convention::Mixed,
        ..Default::default()
    };
    let summary = report::write_report(&store, &opts).unwrap();
    assert_eq!(summary.runs, 7);
    assert!(summary.tables.contains(&"recovery_m_s0.3".to_string()));
    let md = std::fs::read_to_string(d.path().join("tables/recovery_m_s0.3.md")).unwrap();
    assert!(md.starts_with("### Recovery: m, sparsity 0.3\n"), "{md}");
    let header = md.lines().find(|l| l.starts_with("| Method")).unwrap();
    assert_eq!(
        header,
        "| Method | Recovery | Source | BoolQ | PIQA | HellaSwag | WinoGrande | ARC-e | ARC-c | OBQA | Avg | ±Avg | Ret.% | Wiki2 PPL | Rec. s | Δ Avg |"
    );
    // Avg (mixed) is the dense 418/7 = 59.714 minus 100 * drop: CoMe w/o 49.71, hier
    // (-6) 53.71, lora (-8) 51.71; ShortGPT w/o 39.71, hier (-12) 47.71, lora (-15) 44.71.
    // Retention against 59.714; Δ Avg against the same method's w/o row.
    let rows = md_rows(&md);
    // Method, Recovery, then Avg onwards.
    let got: Vec<String> = rows
        .iter()
        .map(|r| format!("{} | {} | {}", r[0], r[1], r[10..].join(" | ")))
        .collect();
    let want = [
        "Dense | - | 59.71 | 0.38 | 100.0 | 5.50 | - | -",
        "CoMe | w/o | 49.71 | 0.38 | 83.3 | 9.00 | - | -",
        "CoMe | hierarchical | 53.71 | 0.38 | 90.0 | 7.00 | 12.5 | +4.00",
        "CoMe | lora | 51.71 | 0.38 | 86.6 | 8.00 | 25.0 | +2.00",
        "ShortGPT | w/o | 39.71 | 0.38 | 66.5 | 20.00 | - | -",
        "ShortGPT | hierarchical | 47.71 | 0.38 | 79.9 | 12.00 | 20.0 | +8.00",
        "ShortGPT | lora | 44.71 | 0.38 | 74.9 | 14.00 | 30.0 | +5.00",
    ];
    assert_eq!(got, want, "{md}");
    // Every row is ours; the task cells are the usual ones.
    assert!(rows.iter().all(|r| r[2] == "ours"));
    assert_eq!(
        rows[2][3..10],
        ["74.00", "64.00", "54.00", "54.00", "64.00", "38.00", "28.00"]
    );

    let tables = report::build(&report::load_runs(&store).unwrap(), &opts).0;
    let t = tables.iter().find(|t| t.id == "recovery_m_s0.3").unwrap();
    assert_eq!(t.key_columns, ["Recovery"]);
    let delta = |m: &str, r: &str| t.cell_keyed(&[m, r], "Δ Avg");
    assert!((delta("CoMe", "hierarchical").unwrap() - 4.0).abs() < 1e-9);
    assert!((delta("ShortGPT", "lora").unwrap() - 5.0).abs() < 1e-9);
    assert_eq!(delta("CoMe", "w/o"), None);
    assert_eq!(t.cell_keyed(&["CoMe", "lora"], "Rec. s"), Some(25.0));
    // The caption: what was held equal, whose hyperparameters, and the usual notes.
    for part in [
        "Held equal across the recovered rows: a budget of 4096 training tokens (`recovery.tokens`: per trained layer for hierarchical, for the whole model for lora), the layer loss mse (`recovery.loss`; lora trains on the LM loss), sequences of 256 tokens (`recovery.seqlen`).",
        "Recovery hyperparameters are ours: the paper publishes none.",
        "Δ Avg: Avg minus the same method's w/o row",
        "first 100 documents per task",
        "acc_norm for HellaSwag, ARC-c and OBQA, acc elsewhere",
        "Items per task: 100 each.",
        "Perplexity: non-overlapping windows of the test text (seqlen=2048, 8 windows).",
    ] {
        assert!(t.caption.contains(part), "missing `{part}` in {}", t.caption);
    }
    assert!(!t.caption.contains("Not held equal"), "{}", t.caption);

    // CSV and LaTeX carry the key column and the two extra columns.
    let csv = std::fs::read_to_string(d.path().join("tables/recovery_m_s0.3.csv")).unwrap();
    let head = csv.lines().next().unwrap();
    assert!(
        head.starts_with("method,recovery,source,BoolQ")
            && head.ends_with("Wiki2 PPL,Rec. s,Δ Avg"),
        "{head}"
    );
    assert!(csv.contains("CoMe,hierarchical,ours,74.0,"), "{csv}");
    let tex = std::fs::read_to_string(d.path().join("tables/recovery_m_s0.3.tex")).unwrap();
    assert!(
        tex.contains("\\begin{tabular}{lllrrrrrrrrrrrrr}")
            && tex.contains("Method & Recovery & Source & BoolQ")
            && tex.contains("$\\Delta$ Avg")
            && tex.contains("CoMe & hierarchical & ours & 74.00"),
        "{tex}"
    );
}

#[test]
fn main_tables_tell_recovered_rows_apart() {
    let d = tempfile::tempdir().unwrap();
    let store = recovery_store(d.path());
    let runs = report::load_runs(&store).unwrap();
    let (tables, plots) = report::build(&runs, &ReportOptions::default());
    let main = tables.iter().find(|t| t.id == "main_m_s0.3").unwrap();
    let md = main.to_markdown();
    let header = md.lines().find(|l| l.starts_with("| Method")).unwrap();
    assert!(
        header.starts_with("| Method | Recovery | Source | BoolQ |")
            && header.ends_with("| Wiki2 PPL |"),
        "{header}"
    );
    let keys: Vec<(String, String)> = md_rows(&md)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let want = [
        ("Dense", "-"),
        ("CoMe", "w/o"),
        ("CoMe", "hierarchical"),
        ("CoMe", "lora"),
        ("ShortGPT", "w/o"),
        ("ShortGPT", "hierarchical"),
        ("ShortGPT", "lora"),
    ];
    assert_eq!(keys, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert!((main.cell_keyed(&["CoMe", "lora"], "Avg").unwrap() - 362.0 / 7.0).abs() < 1e-9);
    assert!((main.cell("CoMe", "Avg").unwrap() - 348.0 / 7.0).abs() < 1e-9);
    // One sparsity only: no sweep; methods and recovery settings only in their own axes:
    // no one-key ablation either.
    let ids: Vec<&str> = tables.iter().map(|t| t.id.as_str()).collect();
    assert!(
        !ids.iter()
            .any(|i| i.starts_with("ablation") || i.starts_with("sweep")),
        "{ids:?}"
    );
    // One sparsity: bar charts, recovered runs as bars of their own.
    let acc = &plots
        .iter()
        .find(|(n, _)| n == "bars_acc_m_s0.3.svg")
        .unwrap()
        .1;
    assert!(acc.contains("CoMe + lora") && acc.contains("ShortGPT + hierarchical"));
}

#[test]
fn sweep_table_keeps_recovered_rows_apart() {
    let d = tempfile::tempdir().unwrap();
    let store = recovery_store(d.path());
    finish(
        &store,
        &spec(Some((Method::Come, MergeOp::Concat, 0.2))),
        &metrics(0.05, 7.0),
    );
    let runs = report::load_runs(&store).unwrap();
    let (tables, _) = report::build(&runs, &ReportOptions::default());
    let sweep = tables.iter().find(|t| t.id == "sweep_m").unwrap();
    assert_eq!(sweep.key_columns, ["Recovery"]);
    let rows: Vec<(&str, &str)> = sweep
        .rows
        .iter()
        .map(|r| (r.label.as_str(), r.keys[0].as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("Dense", "-"),
            ("CoMe", "w/o"),
            ("CoMe", "hierarchical"),
            ("CoMe", "lora"),
            ("ShortGPT", "w/o"),
            ("ShortGPT", "hierarchical"),
            ("ShortGPT", "lora"),
        ]
    );
    assert_eq!(
        sweep.cell_keyed(&["CoMe", "w/o"], "Wiki2 PPL @ 20%"),
        Some(7.0)
    );
    assert_eq!(
        sweep.cell_keyed(&["CoMe", "hierarchical"], "Wiki2 PPL @ 20%"),
        None
    );
    assert_eq!(
        sweep.cell_keyed(&["CoMe", "hierarchical"], "Wiki2 PPL @ 30%"),
        Some(7.0)
    );
    // The recovery table is only for the level with a recovered run.
    let ids: Vec<&str> = tables.iter().map(|t| t.id.as_str()).collect();
    assert!(
        ids.contains(&"recovery_m_s0.3") && !ids.iter().any(|i| i.starts_with("recovery_m_s0.2"))
    );
}

#[test]
fn without_recovered_runs_the_tables_are_the_old_ones() {
    let d = tempfile::tempdir().unwrap();
    let store = filled_store(d.path());
    let runs = report::load_runs(&store).unwrap();
    let (tables, _) = report::build(&runs, &ReportOptions::default());
    let ids: Vec<&str> = tables.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "main_m_s0.2",
            "main_m_s0.3",
            "sweep_m",
            "ablation_merge_m_come_s0.3"
        ]
    );
    for t in &tables {
        assert!(t.key_columns.is_empty() && t.rows.iter().all(|r| r.keys.is_empty()));
        assert!(!t.to_markdown().contains("Recovery") && !t.to_latex().contains("Recovery"));
    }
    // The unrecovered runs of the recovery store give its main table without the column.
    let d2 = tempfile::tempdir().unwrap();
    let plain = Store::open(d2.path().join("s.sqlite")).unwrap();
    finish(&plain, &spec(None), &metrics(0.0, 5.5));
    finish(
        &plain,
        &spec(Some((Method::Come, MergeOp::Concat, 0.3))),
        &metrics(0.1, 9.0),
    );
    finish(
        &plain,
        &spec(Some((Method::ShortGpt, MergeOp::Concat, 0.3))),
        &metrics(0.2, 20.0),
    );
    let plain_main = report::build(
        &report::load_runs(&plain).unwrap(),
        &ReportOptions::default(),
    )
    .0
    .into_iter()
    .find(|t| t.id == "main_m_s0.3")
    .unwrap();
    assert!(plain_main.key_columns.is_empty());
    let rdir = d2.path().join("r");
    std::fs::create_dir_all(&rdir).unwrap();
    let rec_runs = report::load_runs(&recovery_store(&rdir)).unwrap();
    let mut rec_main = report::build(&rec_runs, &ReportOptions::default())
        .0
        .into_iter()
        .find(|t| t.id == "main_m_s0.3")
        .unwrap();
    rec_main
        .rows
        .retain(|r| r.keys[0] == "w/o" || r.keys[0] == "-");
    rec_main.key_columns.clear();
    for r in &mut rec_main.rows {
        r.keys.clear();
    }
    assert_eq!(rec_main.to_markdown(), plain_main.to_markdown());
}

#[test]
fn recovery_loss_is_one_ablation_key() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s.sqlite")).unwrap();
    finish(&store, &spec(None), &metrics(0.0, 5.5));
    let come = (Method::Come, MergeOp::Concat, 0.3);
    finish(&store, &spec(Some(come)), &metrics(0.1, 9.0));
    // Three losses of hierarchical recovery; mse vs mse+cosine differ in one flattened key
    // (`recovery.loss.cosine`), mse vs 0.5*cosine in two: only a label makes them one key.
    for (loss, drop) in [("mse", 0.06), ("mse,cosine", 0.05), ("cosine:0.5", 0.07)] {
        let rec = recovery(RecoveryMethod::Hierarchical, loss);
        finish_recovered(&store, come, &rec, &recovered_metrics(drop, 7.0, 10.0));
    }
    let runs = report::load_runs(&store).unwrap();
    let (tables, _) = report::build(&runs, &ReportOptions::default());
    let ids: Vec<&str> = tables.iter().map(|t| t.id.as_str()).collect();
    let abl: Vec<&&str> = ids.iter().filter(|i| i.starts_with("ablation")).collect();
    assert_eq!(
        abl,
        [&"ablation_recovery.loss_m_come_s0.3_hierarchical"],
        "{ids:?}"
    );
    let t = tables
        .iter()
        .find(|t| t.id == "ablation_recovery.loss_m_come_s0.3_hierarchical")
        .unwrap();
    assert_eq!(
        t.title,
        "Ablation of recovery.loss: m, CoMe, sparsity 0.3, hierarchical recovery"
    );
    let rows: Vec<(&str, Vec<String>)> = t
        .rows
        .iter()
        .map(|r| (r.label.as_str(), r.keys.clone()))
        .collect();
    assert_eq!(
        rows,
        [
            ("Dense", vec!["-".to_string()]),
            ("recovery.loss=0.5*cosine", vec!["hierarchical".into()]),
            ("recovery.loss=mse", vec!["hierarchical".into()]),
            ("recovery.loss=mse+cosine", vec!["hierarchical".into()]),
        ]
    );
    // mse+cosine is 5 points down: (418 - 35) / 7.
    assert!((t.cell("recovery.loss=mse+cosine", "Avg").unwrap() - 383.0 / 7.0).abs() < 1e-9);
    assert!(t.caption.contains("Rows differ only in `recovery.loss`"));

    // Elsewhere the loss tells the hierarchical rows apart, and the recovery table's
    // caption says the loss was not held equal.
    let main = tables.iter().find(|t| t.id == "main_m_s0.3").unwrap();
    let keys: Vec<&str> = main.rows.iter().map(|r| r.keys[0].as_str()).collect();
    assert_eq!(
        keys,
        [
            "-",
            "w/o",
            "hierarchical (loss=0.5*cosine)",
            "hierarchical (loss=mse)",
            "hierarchical (loss=mse+cosine)"
        ]
    );
    let rt = tables.iter().find(|t| t.id == "recovery_m_s0.3").unwrap();
    assert!(
        rt.caption.contains("Held equal across the recovered rows: a budget of 4096 training tokens (`recovery.tokens`: per trained layer for hierarchical), sequences of 256 tokens (`recovery.seqlen`). Not held equal (the recovered rows differ in them): `recovery.loss` (0.5*cosine, mse, mse+cosine)."),
        "{}",
        rt.caption
    );
    assert!(
        (rt.cell_keyed(&["CoMe", "hierarchical (loss=mse+cosine)"], "Δ Avg")
            .unwrap()
            - 5.0)
            .abs()
            < 1e-9
    );
}

/// The text elements of `class` in an SVG we wrote (one per line, escaped as written).
fn texts_of_class(svg: &str, class: &str) -> Vec<String> {
    let tag = format!(r#"class="{class}""#);
    svg.lines()
        .filter(|l| l.starts_with("<text") && l.contains(&tag))
        .filter_map(|l| {
            let start = l.find('>')? + 1;
            let end = l.rfind("</text>")?;
            Some(l[start..end].to_string())
        })
        .collect()
}

/// Every figure kind, rendered from fixed stores: every text lies inside the canvas as
/// the renderer lays it out, legend entries and bar labels are unique, series colours do
/// not repeat, accuracies carry error bars, perplexity axes have round log ticks, and a
/// PNG of twice the SVG's size sits next to each SVG.
#[test]
fn figures_fit_their_canvas_and_tell_series_apart() {
    let d = tempfile::tempdir().unwrap();
    let mkdir = |name: &str| {
        let p = d.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let sweep = filled_store(&mkdir("sweep"));
    let bars = recovery_store(&mkdir("bars"));
    // Ten variants over two levels: more lines than colours, so the sweep splits.
    let many = Store::open(d.path().join("many.sqlite")).unwrap();
    finish(&many, &spec(None), &metrics(0.0, 5.5));
    for s in [0.2, 0.3] {
        for k in 0..10 {
            let mut r = spec(Some((Method::Come, MergeOp::Concat, s))).experiment;
            if let Some(p) = r.prune.as_mut() {
                p.comep_grid = 2 + k;
                p.method = Method::ComeP;
            }
            finish(
                &many,
                &RunSpec::new("r", "main", r),
                &metrics(0.01 * k as f64 + s / 10.0, 6.0 + k as f64),
            );
        }
    }
    let mut kinds = std::collections::BTreeSet::new();
    for (name, store) in [("sweep", &sweep), ("bars", &bars), ("many", &many)] {
        let out = d.path().join(format!("out-{name}"));
        let opts = ReportOptions {
            out_dir: out.clone(),
            published: published(d.path()),
            ..Default::default()
        };
        report::write_report(store, &opts).unwrap();
        let svgs: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "svg"))
            .collect();
        assert!(!svgs.is_empty(), "{name}: no figure");
        for p in svgs {
            let file = p.file_name().unwrap().to_string_lossy().to_string();
            let svg = std::fs::read_to_string(&p).unwrap();
            well_formed(&svg).unwrap_or_else(|e| panic!("{file}: {e}"));
            let outside = report::plot::raster::text_outside(&svg).unwrap();
            assert!(outside.is_empty(), "{file}: {outside:?}");
            let boxes = report::plot::raster::text_boxes(&svg).unwrap();
            assert!(
                boxes.iter().all(|b| b.bbox.2 > b.bbox.0),
                "{file}: text laid out with no width (font missing?)"
            );
            let png = std::fs::read(p.with_extension("png")).unwrap();
            assert_eq!(&png[1..4], b"PNG", "{file}");
            let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
            let svg_w: f64 = svg
                .split("width=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(width as f64, 2.0 * svg_w, "{file}");
            if file.starts_with("plot_") {
                kinds.insert("line");
                let legend = texts_of_class(&svg, "legend");
                let unique: std::collections::BTreeSet<_> = legend.iter().collect();
                assert_eq!(unique.len(), legend.len(), "{file}: {legend:?}");
                assert!(legend.len() - 1 <= 9, "{file}: {legend:?}");
                let colours: Vec<&str> = svg
                    .lines()
                    .filter(|l| l.starts_with("<line") && l.contains(r#"stroke-width="2""#))
                    .filter_map(|l| l.split("stroke=\"").nth(1)?.split('"').next())
                    .filter(|c| *c != "#555555")
                    .collect();
                let distinct: std::collections::BTreeSet<_> = colours.iter().collect();
                assert_eq!(distinct.len(), colours.len(), "{file}: {colours:?}");
            } else {
                kinds.insert("bar");
                let labels = texts_of_class(&svg, "label");
                let unique: std::collections::BTreeSet<_> = labels.iter().collect();
                assert_eq!(unique.len(), labels.len(), "{file}: {labels:?}");
                assert!(texts_of_class(&svg, "reference")[0].starts_with("dense "));
            }
            let ticks = texts_of_class(&svg, "tick");
            if file.contains("_ppl_") {
                assert!(
                    ticks
                        .iter()
                        .any(|t| ["1", "10", "100", "1k"].contains(&t.as_str())),
                    "{file}: {ticks:?}"
                );
            } else {
                assert!(svg.contains(r#"class="errorbar""#), "{file}");
            }
        }
    }
    assert_eq!(kinds.len(), 2);
    // The check sees what a reader would: text running past the right edge.
    let cut = r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50"><text x="60" y="30" font-size="12">a long label</text></svg>"#;
    let outside = report::plot::raster::text_outside(cut).unwrap();
    assert_eq!(outside.len(), 1, "{outside:?}");
    // More variants than colours: the sweep is split in parts.
    assert!(d.path().join("out-many/plot_acc_m_part2.svg").exists());
}

/// A LoRA row is not labelled with the layer loss its config carries (LoRA trains on the
/// LM loss), even when the hierarchical rows beside it differ in their loss.
#[test]
fn lora_rows_carry_no_layer_loss_label() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s.sqlite")).unwrap();
    finish(&store, &spec(None), &metrics(0.0, 5.5));
    let come = (Method::Come, MergeOp::Concat, 0.3);
    finish(&store, &spec(Some(come)), &metrics(0.1, 9.0));
    for (i, (method, loss)) in [
        (RecoveryMethod::Hierarchical, "cosine"),
        (RecoveryMethod::Hierarchical, "mse"),
        (RecoveryMethod::Lora, "cosine"),
    ]
    .into_iter()
    .enumerate()
    {
        let m = recovered_metrics(0.05 + 0.01 * i as f64, 7.0 + i as f64, 10.0);
        finish_recovered(&store, come, &recovery(method, loss), &m);
    }
    let (labels, md) = recovery_labels(&store, d.path());
    assert_eq!(
        labels,
        [
            "-",
            "w/o",
            "hierarchical (loss=cosine)",
            "hierarchical (loss=mse)",
            "lora"
        ],
        "{md}"
    );
}

/// A key left out of the hash at its default (`recovery.inputs = teacher`) still tells
/// two recovered rows apart: the run without it had the default.
#[test]
fn opt_in_recovery_keys_label_rows_at_their_default() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s.sqlite")).unwrap();
    finish(&store, &spec(None), &metrics(0.0, 5.5));
    let come = (Method::Come, MergeOp::Concat, 0.3);
    finish(&store, &spec(Some(come)), &metrics(0.1, 9.0));
    let teacher = recovery(RecoveryMethod::Hierarchical, "cosine");
    let student = RecoveryConfig {
        inputs: come_repro::distill::LayerInputs::Student,
        ..teacher.clone()
    };
    finish_recovered(&store, come, &teacher, &recovered_metrics(0.05, 7.0, 10.0));
    finish_recovered(&store, come, &student, &recovered_metrics(0.06, 8.0, 10.0));
    let (labels, md) = recovery_labels(&store, d.path());
    assert_eq!(
        labels[2..],
        [
            "hierarchical (inputs=student)",
            "hierarchical (inputs=teacher)"
        ],
        "{md}"
    );
}

/// The Recovery cells of the recovery table built from `store`, and its markdown.
fn recovery_labels(store: &Store, dir: &Path) -> (Vec<String>, String) {
    let opts = ReportOptions {
        out_dir: dir.join("tables"),
        convention: Convention::Mixed,
        ..Default::default()
    };
    let tables = report::build(&report::load_runs(store).unwrap(), &opts).0;
    let t = tables.iter().find(|t| t.id == "recovery_m_s0.3").unwrap();
    let md = t.to_markdown();
    let labels = md_rows(&md).iter().map(|r| r[1].clone()).collect();
    (labels, md)
}

#[test]
fn seed_replicates_become_one_row_with_mean_and_spread() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s.sqlite")).unwrap();
    finish(&store, &spec(None), &metrics(0.0, 5.5));
    let come = (Method::Come, MergeOp::Concat, 0.3);
    finish(&store, &spec(Some(come)), &metrics(0.1, 20.0));
    // Three seeds of hierarchical: drops 6, 8, 10 points, perplexities 7, 8, 12.
    for (seed, drop, ppl) in [(0, 0.06, 7.0), (1, 0.08, 8.0), (2, 0.10, 12.0)] {
        let mut rec = recovery(RecoveryMethod::Hierarchical, "cosine");
        rec.seed = seed;
        finish_recovered(&store, come, &rec, &recovered_metrics(drop, ppl, 10.0));
    }
    // One seed of LoRA: no replicates, no row.
    let lora = recovery(RecoveryMethod::Lora, "cosine");
    finish_recovered(&store, come, &lora, &recovered_metrics(0.05, 9.0, 10.0));
    let opts = ReportOptions {
        out_dir: d.path().join("tables"),
        convention: Convention::Mixed,
        ..Default::default()
    };
    let summary = report::write_report(&store, &opts).unwrap();
    assert!(
        summary.tables.contains(&"seeds_m_s0.3".to_string()),
        "{:?}",
        summary.tables
    );
    let md = std::fs::read_to_string(d.path().join("tables/seeds_m_s0.3.md")).unwrap();
    let header: Vec<String> = md
        .lines()
        .find(|l| l.starts_with("| Method"))
        .unwrap()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect();
    let rows = md_rows(&md);
    assert_eq!(rows.len(), 1, "{md}");
    let cell = |h: &str| rows[0][header.iter().position(|x| x == h).unwrap()].clone();
    // The recovery cell names no seed: the row is every seed.
    assert_eq!(
        (rows[0][0].as_str(), cell("Recovery").as_str()),
        ("CoMe", "hierarchical")
    );
    // Dense Avg (mixed) is 59.714; each seed is 100 * drop below it: 53.71, 51.71, 49.71.
    assert_eq!(cell("Avg"), "51.71");
    assert_eq!(cell("sd Avg"), "2.00");
    assert_eq!(cell("BoolQ"), "72.00");
    // Perplexity: mean 9, sd sqrt((4 + 1 + 9) / 2) = 2.646.
    assert_eq!(cell("Wiki2 PPL"), "9.00");
    assert_eq!(cell("sd Wiki2 PPL"), "2.65");
    assert_eq!(cell("Seeds"), "3");
    assert!(md.contains("`recovery.seed`: 0, 1, 2"), "{md}");
    // Without replicates there is no seed table.
    let p = d.path().join("p");
    std::fs::create_dir_all(&p).unwrap();
    let plain = recovery_store(&p);
    let opts = ReportOptions {
        out_dir: p.join("tables"),
        ..opts
    };
    let summary = report::write_report(&plain, &opts).unwrap();
    assert!(!summary.tables.iter().any(|t| t.starts_with("seeds_")));
}

#[test]
fn budget_curves_draw_one_line_per_recovery_across_budgets() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s.sqlite")).unwrap();
    finish(&store, &spec(None), &metrics(0.0, 5.5));
    let come = (Method::Come, MergeOp::Concat, 0.3);
    let drop = (Method::Come, MergeOp::Drop, 0.3);
    // Perplexity falls with the budget and flattens: 4k, 8k, 16k.
    for (tokens, ppl) in [(4096, 40.0), (8192, 20.0), (16384, 18.0)] {
        // Compute: 11 merged units for concat, 4 for drop.
        for (prune, extra, units) in [(come, 0.0, 11.0), (drop, 5.0, 4.0)] {
            let mut rec = recovery(RecoveryMethod::Hierarchical, "cosine");
            rec.tokens = tokens;
            let mut m = recovered_metrics(0.05, ppl + extra, 1.0);
            m.push(Metric::new(
                "",
                come_repro::names::RUN_RECOVERY_LAYER_TOKEN_PASSES,
                tokens as f64 * units,
            ));
            finish_recovered(&store, prune, &rec, &m);
        }
    }
    // One LoRA budget: not a line.
    let lora = recovery(RecoveryMethod::Lora, "cosine");
    finish_recovered(&store, come, &lora, &recovered_metrics(0.05, 30.0, 1.0));
    let out = d.path().join("out");
    let opts = ReportOptions {
        out_dir: out.clone(),
        ..Default::default()
    };
    report::write_report(&store, &opts).unwrap();
    let svg = std::fs::read_to_string(out.join("budget_wikitext2_m_s0.3.svg")).unwrap();
    well_formed(&svg).unwrap();
    assert!(report::plot::raster::text_outside(&svg).unwrap().is_empty());
    let legend = texts_of_class(&svg, "legend");
    assert_eq!(
        legend,
        [
            "CoMe (merge=concat) + hierarchical",
            "CoMe (merge=drop) + hierarchical"
        ],
        "{svg}"
    );
    assert!(out.join("budget_acc_m_s0.3.png").exists());
    // The same lines against compute: drop's cheaper units put its line further left.
    let svg = std::fs::read_to_string(out.join("budget_compute_wikitext2_m_s0.3.svg")).unwrap();
    well_formed(&svg).unwrap();
    assert_eq!(texts_of_class(&svg, "legend").len(), 2, "{svg}");
    assert!(svg.contains("token passes"), "{svg}");
    // Two budgets are not a curve.
    let two = Store::open(d.path().join("two.sqlite")).unwrap();
    for tokens in [4096, 8192] {
        let mut rec = recovery(RecoveryMethod::Hierarchical, "cosine");
        rec.tokens = tokens;
        finish_recovered(&two, come, &rec, &recovered_metrics(0.05, 9.0, 1.0));
    }
    let out2 = d.path().join("out2");
    report::write_report(
        &two,
        &ReportOptions {
            out_dir: out2.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!out2.join("budget_wikitext2_m_s0.3.svg").exists());
}

/// Stage peaks make one memory table per model: a column per stage that any run made
/// (host, then GPU), "-" where a run reused the stage from the cache.
#[test]
fn memory_table_shows_each_made_stage() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s.sqlite")).unwrap();
    let peak = |stage: &str, v: f64| {
        Metric::new("", come_repro::names::STAGE_PEAK_RSS_MIB, v)
            .with_context(format!("stage={stage}"))
    };
    let mut made = metrics(0.1, 9.0);
    made.extend([
        peak("model", 700.0),
        peak("prune", 1234.4),
        peak("eval", 900.0),
    ]);
    made.push(
        Metric::new("", come_repro::names::STAGE_PEAK_DEVICE_MIB, 2048.0)
            .with_context("stage=prune"),
    );
    finish(
        &store,
        &spec(Some((Method::Come, MergeOp::Concat, 0.3))),
        &made,
    );
    // The prune stage reused: only eval's peak.
    let mut reused = metrics(0.2, 20.0);
    reused.push(peak("eval", 880.0).with_context("stage=eval,from=process"));
    finish(
        &store,
        &spec(Some((Method::Come, MergeOp::Linear, 0.3))),
        &reused,
    );
    // No peaks at all (runs made before they were recorded): no row.
    finish(&store, &spec(None), &metrics(0.0, 5.5));
    let runs = come_repro::report::load_runs(&store).unwrap();
    let tables = come_repro::report::memory::memory_tables(&runs);
    assert_eq!(tables.len(), 1);
    let t = &tables[0];
    assert_eq!(t.id, "memory_m");
    let headers: Vec<String> = t.columns.iter().map(|c| c.header()).collect();
    assert_eq!(
        headers,
        ["model MiB", "prune MiB", "eval MiB", "prune GPU MiB"]
    );
    assert_eq!(t.rows.len(), 2);
    assert_eq!(
        t.rows[0].cells,
        [Some(700.0), Some(1234.4), Some(900.0), Some(2048.0)]
    );
    assert_eq!(t.rows[1].cells, [None, None, Some(880.0), None]);
    let md = t.to_markdown();
    assert!(md.contains("| 700 | 1234 | 900 | 2048 |"), "{md}");
}
