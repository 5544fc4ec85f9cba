//! Tables and plots from a store filled with synthetic runs; expected numbers are worked
//! out by hand in the comments.

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
            "ShortGPT (merge=concat)",
            "ours",
            "60.00",
            "50.00",
            "40.00",
            "40.00",
            "50.00",
            "24.00",
            "14.00",
            "39.71",
            "0.38",
            "66.5",
            "20.00",
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
        index.contains("![plot_acc_m.svg](plot_acc_m.svg)")
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
        row("ShortGPT (merge=concat)")[2..],
        ["-", "20.00", "-", "-", "39.71", "66.5"]
    );
    assert!(md.contains("items per task: 100 each"), "{md}");
}
