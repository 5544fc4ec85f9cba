//! Parity with the CoMe authors' code on SmolLM2-135M (`../shared/reference/come-smollm2`,
//! produced by their code, not ours): the paper's calibration recipe draws their rows and,
//! tokenised as they did, reproduces their calibration ids exactly; on those ids our CoMe (reference GQA rule, mean norms) and
//! ShortGPT make their decisions. CI runs the first merge round and ShortGPT; the whole
//! 21-layer CoMe run with its perplexity is `--ignored` (minutes on two cores):
//!
//!     cargo test --release --test reference_parity -- --ignored --nocapture

mod common;

use come_repro::calib::{self, CalibConfig};
use come_repro::eval::perplexity::{perplexity, PplOptions};
use come_repro::model::load::{load_model, LoadOptions};
use come_repro::model::tokenizer::Tokenizer;
use come_repro::prune::merge::{GqaMapping, NormMode};
use come_repro::prune::{prune, Method, PruneConfig, PruneReport};
use serde_json::Value;

fn reference(name: &str) -> Value {
    let p = come_repro::paths::reference_dir()
        .join("come-smollm2")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn reference_ids() -> Vec<Vec<u32>> {
    serde_json::from_value(reference("calib_ids.json")).unwrap()
}

/// Windows of `ours` against the reference's, naming the first difference.
fn assert_same_windows(ours: &[Vec<u32>], want: &[Vec<u32>]) {
    assert_eq!(ours.len(), want.len(), "number of windows");
    for (i, (a, b)) in ours.iter().zip(want).enumerate() {
        if let Some(j) = (0..a.len().min(b.len())).find(|&j| a[j] != b[j]) {
            panic!(
                "window {i}, token {j}: ours {:?}, reference {:?}",
                &a[j.saturating_sub(3)..(j + 5).min(a.len())],
                &b[j.saturating_sub(3)..(j + 5).min(b.len())]
            );
        }
        assert_eq!(a.len(), b.len(), "window {i}");
    }
}

/// SmolLM2's tokenizer with the plain GPT-2 byte-level pre-tokenizer instead of
/// tokenizer.json's `Sequence[Digits(individual), ByteLevel]`: the tokenizer the reference
/// run used (it splits a whitespace run before a digit differently, 38,165 stream tokens
/// instead of 38,163).
fn reference_tokenizer(tok: &Tokenizer) -> Tokenizer {
    let mut inner = tok.inner().clone();
    inner.with_pre_tokenizer(Some(
        tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true),
    ));
    Tokenizer::from_tokenizers(inner, None, vec![])
}

#[test]
fn paper_recipe_reproduces_the_reference_calibration_ids() {
    let dir = common::smollm2();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let cfg = CalibConfig::default();
    // The rows drawn are the ones the reference lists, in its order.
    let rows: Vec<usize> = serde_json::from_value(
        reference("concat_merge_t21.json")["calibration"]["row_indices"].clone(),
    )
    .unwrap();
    let set = calib::sample(&tok, &cfg).unwrap();
    assert_eq!(calib::drawn_rows(&cfg, set.rows_available), rows);
    // Same rows, same joining, same windows: with the reference's tokenizer, the same ids.
    let theirs = calib::sample(&reference_tokenizer(&tok), &cfg).unwrap();
    assert_same_windows(&theirs.sequences, &reference_ids());
    // With SmolLM2's own tokenizer the stream is two tokens shorter; still 18 windows.
    assert_eq!(set.sequences.len(), 18);
    assert_ne!(set.sequences, theirs.sequences);
}

#[test]
fn an_ids_file_is_used_as_is_and_checked() {
    let dir = common::smollm2();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let cfg = CalibConfig {
        ids: Some(reference_ids_path()),
        ..Default::default()
    };
    let set = calib::sample(&tok, &cfg).unwrap();
    assert_same_windows(&set.sequences, &reference_ids());
    assert_eq!(set.seqlen, 2048);
}

fn reference_ids_path() -> std::path::PathBuf {
    come_repro::paths::reference_dir().join("come-smollm2/calib_ids.json")
}

/// Decisions are compared on the reference's own ids (see the tokenizer note above).
fn reference_calib() -> CalibConfig {
    CalibConfig {
        ids: Some(reference_ids_path()),
        ..Default::default()
    }
}

fn shortgpt_config() -> PruneConfig {
    PruneConfig {
        method: Method::ShortGpt,
        target_layers: Some(21),
        calib: reference_calib(),
        ..Default::default()
    }
}

fn come_config(target: usize) -> PruneConfig {
    PruneConfig {
        method: Method::Come,
        target_layers: Some(target),
        norm: NormMode::Mean,
        gqa_mapping: GqaMapping::Reference,
        calib: reference_calib(),
        ..Default::default()
    }
}

fn run(cfg: &PruneConfig) -> (come_repro::model::Model, PruneReport) {
    let dir = common::smollm2();
    let mut model = load_model(&dir, LoadOptions::default()).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let set = calib::sample(&tok, &cfg.calib).unwrap();
    let rep = prune(&mut model, set, cfg, &mut come_repro::progress::ignore).unwrap();
    (model, rep)
}

fn usizes(v: &Value) -> Vec<usize> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Our rounds against the reference's first `rep.steps.len()` merges.
fn assert_rounds_match(rep: &PruneReport) {
    let r = reference("concat_merge_t21.json");
    let merges = r["merges"].as_array().unwrap();
    for (step, m) in rep.steps.iter().zip(merges) {
        let round = m["round"].as_u64().unwrap();
        assert_eq!(
            step.positions,
            usizes(&m["chosen_pair_current_indices"]),
            "round {round}: pair"
        );
        let rec = step.concat.as_ref().expect("a concat record");
        let want: Vec<f64> = serde_json::from_value(m["merge_ratio"].clone()).unwrap();
        for (a, b) in rec.shares.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-4,
                "round {round}: shares {:?} vs {want:?}",
                rec.shares
            );
        }
        for (k, src) in m["sources"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                rec.kv_heads_kept[k],
                usizes(&src["kept_kv_heads"]),
                "round {round} source {k}: KV heads"
            );
            assert_eq!(
                rec.q_heads_kept[k],
                usizes(&src["kept_q_heads_as_code_does_mask_repeat"]),
                "round {round} source {k}: query heads"
            );
            assert_eq!(
                rec.mlp_kept[k],
                usizes(&src["kept_ffn_neurons"]),
                "round {round} source {k}: MLP neurons"
            );
        }
    }
}

#[test]
fn come_first_round_matches_the_authors_code() {
    let (_, rep) = run(&come_config(29));
    assert_eq!(rep.steps.len(), 1);
    assert_rounds_match(&rep);
}

#[test]
fn shortgpt_matches_the_authors_code_in_one_pass() {
    let cfg = shortgpt_config();
    let (_, rep) = run(&cfg);
    let r = reference("shortgpt_t21.json");
    let mut ours: Vec<usize> = rep.steps.iter().flat_map(|s| s.originals.clone()).collect();
    let mut want = usizes(&r["removed_original_layers"]);
    ours.sort();
    want.sort();
    assert_eq!(ours, want);
    let corr: Vec<Vec<usize>> =
        serde_json::from_value(r["final_correspondence_new_layer_to_original_layers"].clone())
            .unwrap();
    assert_eq!(rep.correspondence, corr);
    // One forward of the calibration set: a layer pass per layer and window.
    assert_eq!(rep.layer_passes, 30 * 18);
    // Our BI (1 - mean cos) is a scaled copy of the reference's: equal ratios (to 1e-3:
    // the two forwards differ in f32 rounding).
    let bi: Vec<f64> = serde_json::from_value(r["bi_per_layer"].clone()).unwrap();
    let scores: Vec<(usize, f64)> = rep
        .steps
        .iter()
        .map(|s| (s.originals[0], s.score.unwrap()))
        .collect();
    let (l0, s0) = scores[0];
    for &(l, s) in &scores[1..] {
        let (a, b) = (s / s0, bi[l] / bi[l0]);
        assert!((a / b - 1.0).abs() < 1e-3, "layer {l}: BI ratio {a} vs {b}");
    }
}

/// WikiText-2 test perplexity (2048-token windows, all 148) as the reference measured it:
/// the stream tokenised by the reference's tokenizer (with SmolLM2's own, the dense model
/// gives 21.6305 in transformers against the reference's 21.6084, and a model as damaged
/// as CoMe's at 21 layers moves by percents).
fn wikitext_ppl(model: &come_repro::model::Model) -> f64 {
    let tok = reference_tokenizer(&Tokenizer::from_dir(&common::smollm2()).unwrap());
    let text = std::fs::read_to_string(come_repro::paths::wikitext2_test()).unwrap();
    let ids = tok.encode(&text, false).unwrap();
    perplexity(
        model,
        &ids,
        2048,
        PplOptions {
            batch_size: 1,
            ..Default::default()
        },
        |_, _| {},
    )
    .unwrap()
    .ppl
}

#[test]
#[ignore = "the whole 21-layer CoMe run plus 148 windows of perplexity: minutes"]
fn come_whole_run_matches_the_authors_code() {
    let t0 = std::time::Instant::now();
    let (model, rep) = run(&come_config(21));
    println!(
        "CoMe 30 -> 21: {:.1} s, {} layer passes",
        t0.elapsed().as_secs_f64(),
        rep.layer_passes
    );
    assert_eq!(rep.steps.len(), 9);
    assert_rounds_match(&rep);
    let r = reference("concat_merge_t21.json");
    let want: Vec<Vec<usize>> =
        serde_json::from_value(r["final_correspondence_new_layer_to_original_layers"].clone())
            .unwrap();
    assert_eq!(rep.correspondence, want);
    let ppl = wikitext_ppl(&model);
    let want = r["wiki2_ppl_pruned"].as_f64().unwrap();
    println!("WikiText-2 ppl {ppl:.2} (reference {want:.2})");
    assert!((ppl / want - 1.0).abs() < 1e-3, "ppl {ppl} vs {want}");
}

#[test]
#[ignore = "148 windows of perplexity: minutes"]
fn shortgpt_perplexity_matches_the_authors_code() {
    let cfg = shortgpt_config();
    let (model, _) = run(&cfg);
    let ppl = wikitext_ppl(&model);
    let want = reference("shortgpt_t21.json")["wiki2_ppl_pruned"]
        .as_f64()
        .unwrap();
    println!("WikiText-2 ppl {ppl:.2} (reference {want:.2})");
    assert!((ppl / want - 1.0).abs() < 1e-3, "ppl {ppl} vs {want}");
}
