//! The two perplexity protocols against a direct computation from full-window logits:
//! GPTQ's (every token but the first) and llama.cpp's `llama-perplexity` (the second half
//! of each window, BOS at each window's start when the stream starts with BOS).

mod common;

use come_repro::eval::perplexity::{perplexity, PplOptions, PplProtocol};
use come_repro::model::load::{load_model, LoadOptions};
use come_repro::model::tokenizer::Tokenizer;
use come_repro::model::Model;
use tch::{Kind, Tensor};

/// exp(mean NLL) of the tokens after position `first` in each window, computed from the
/// model's logits one window at a time; `bos` replaces each window's first token.
fn direct(
    model: &Model,
    ids: &[u32],
    n: usize,
    windows: usize,
    first: usize,
    bos: Option<u32>,
) -> f64 {
    let _g = tch::no_grad_guard();
    let (mut nll, mut count) = (0f64, 0usize);
    for w in 0..windows {
        let mut win: Vec<i64> = ids[w * n..(w + 1) * n].iter().map(|&t| t as i64).collect();
        if let Some(b) = bos {
            win[0] = b as i64;
        }
        let logp = model
            .forward(&Tensor::from_slice(&win).view([1, -1]), None)
            .unwrap()
            .log_softmax(-1, Kind::Double);
        for i in first..n - 1 {
            nll -= logp.double_value(&[0, i as i64, win[i + 1]]);
            count += 1;
        }
    }
    (nll / count as f64).exp()
}

#[test]
fn protocols_equal_a_direct_computation() {
    let dir = common::stories();
    let model = load_model(&dir, LoadOptions::default()).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let text = std::fs::read_to_string(come_repro::paths::wikitext2_test()).unwrap();
    let with_bos = tok.encode(&text[..20_000], true).unwrap();
    let bos = tok.bos_id;
    assert_eq!(with_bos.first().copied(), bos, "stories260K adds BOS");
    let (n, windows) = (64, 5);
    let run = |ids: &[u32], protocol| {
        let opts = PplOptions {
            max_windows: Some(windows),
            batch_size: 2,
            protocol,
            bos,
        };
        perplexity(&model, ids, n, opts, |_, _| {}).unwrap()
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b;

    let gptq = run(&with_bos, PplProtocol::Gptq);
    assert_eq!(gptq.predicted_tokens, (windows * (n - 1)) as i64);
    assert!(close(
        gptq.ppl,
        direct(&model, &with_bos, n, windows, 0, None)
    ));

    let llama = run(&with_bos, PplProtocol::LlamaCpp);
    assert_eq!(llama.predicted_tokens, (windows * (n - 1 - n / 2)) as i64);
    let want = direct(&model, &with_bos, n, windows, n / 2, bos);
    assert!(close(llama.ppl, want), "{} vs {want}", llama.ppl);
    assert!(!close(
        llama.ppl,
        direct(&model, &with_bos, n, windows, n / 2, None)
    ));
    assert_eq!(llama.context(), "seqlen=64,protocol=llama_cpp");
    assert_eq!(gptq.context(), "seqlen=64");

    // A stream without BOS keeps its windows as they are.
    let plain = &with_bos[1..];
    let got = run(plain, PplProtocol::LlamaCpp).ppl;
    assert!(close(got, direct(&model, plain, n, windows, n / 2, None)));

    let opts = PplOptions {
        protocol: PplProtocol::LlamaCpp,
        ..Default::default()
    };
    let e = perplexity(&model, &with_bos, 3, opts, |_, _| {}).unwrap_err();
    assert!(e.to_string().contains(">= 4"), "{e}");
}
