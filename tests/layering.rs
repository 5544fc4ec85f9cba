//! The crate's layers, enforced by reading the sources: a top-level module may use only
//! modules of its own layer or of the layers below it, and the modules' import graph has
//! no cycle. New top-level modules must be given a layer here.
//!
//! Layers, lowest first:
//! - foundation: errors, names, hashing, atomic publish and cache locks, cancellation,
//!   paths, rng, runtime and the platform shims;
//! - algorithms: the model, calibration, pruning, recovery and evaluation, which never see
//!   the pipeline, the grid, the store or the report;
//! - pipeline: the experiment (a run's resolved config and identity) and the stages;
//! - records: the run store and the grid files;
//! - orchestration: the grid runner, shards, Slurm, the report.
//!
//! The command line (`src/cli`, `src/main.rs`) sits above them all and is not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: [(&str, &[&str]); 5] = [
    (
        "foundation",
        &[
            "cancel",
            "device_memory",
            "dl",
            "error",
            "hashing",
            "heap",
            "measure",
            "memory",
            "mkl_dispatch",
            "names",
            "panic_guard",
            "paths",
            "progress",
            "publish",
            "rng",
            "runtime",
        ],
    ),
    (
        "algorithms",
        &["calib", "distill", "eval", "generate", "model", "prune"],
    ),
    ("pipeline", &["experiment", "stages"]),
    ("records", &["grid", "track"]),
    ("orchestration", &["report", "runner", "shard", "slurm"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// Code without its comments (a doc link is not a dependency).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level modules that `text` refers to: `crate::NAME` and the names of a grouped
/// `use crate::{a, b::c}`.
fn references(text: &str) -> BTreeSet<String> {
    let text = code(text);
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: after `{` and after each comma at depth 0.
            let mut depth = 0;
            let mut start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        out.insert(ident(&group[k..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn rust_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            rust_files(&e, out);
        }
    } else if p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

/// module -> (module it uses -> a file where it does).
fn import_graph(src: &Path) -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let mut graph: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if ["lib", "main", "cli"].contains(&name.as_str()) {
            continue;
        }
        let mut files = vec![];
        rust_files(&p, &mut files);
        let edges = graph.entry(name.clone()).or_default();
        for f in files {
            for m in references(&std::fs::read_to_string(&f).unwrap()) {
                if m != name {
                    edges.entry(m).or_insert_with(|| f.clone());
                }
            }
        }
    }
    graph
}

/// Rule violations of `graph`: unplaced modules and imports of a higher layer.
fn violations(graph: &BTreeMap<String, BTreeMap<String, PathBuf>>) -> Vec<String> {
    let mut out = vec![];
    for (m, edges) in graph {
        let Some(lm) = layer_of(m) else {
            out.push(format!(
                "module `{m}` has no layer: place it in tests/layering.rs"
            ));
            continue;
        };
        for (to, file) in edges {
            let Some(lt) = layer_of(to) else { continue };
            if lt > lm {
                out.push(format!(
                    "{}: `{m}` ({}) uses `{to}` ({}), a higher layer",
                    file.display(),
                    LAYERS[lm].0,
                    LAYERS[lt].0
                ));
            }
        }
    }
    out
}

/// A cycle of the graph, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeMap<String, PathBuf>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = path.iter().position(|x| x == n).unwrap_or(0);
                let mut c = path[at..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for to in g.get(n).into_iter().flat_map(|e| e.keys()) {
            if g.contains_key(to) {
                if let Some(c) = visit(to, g, state, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut state, &mut vec![]))
}

#[test]
fn every_module_uses_only_its_layer_and_those_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    assert!(graph.len() > 20, "found {} modules", graph.len());
    let v = violations(&graph);
    assert!(v.is_empty(), "layering violations:\n{}", v.join("\n"));
    if let Some(c) = cycle(&graph) {
        panic!("import cycle: {}", c.join(" -> "));
    }
    // Every layer names only modules that exist.
    for (layer, mods) in LAYERS {
        for m in mods {
            assert!(
                graph.contains_key(*m),
                "layer {layer} names `{m}`, not a module"
            );
        }
    }
}

#[test]
fn the_checker_sees_upward_imports_grouped_uses_and_cycles() {
    let refs = references(
        "use crate::error::Result;\n\
         use crate::{names::ACC, runner::{STOP, CURRENT}};\n\
         // crate::report in a comment is not a use\n\
         let x = crate::stages::prune::FILE;",
    );
    let want: BTreeSet<String> = ["error", "names", "runner", "stages"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(refs, want);

    let f = PathBuf::from("src/distill/run.rs");
    let mut g: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    g.entry("distill".into())
        .or_default()
        .insert("runner".into(), f.clone());
    g.entry("runner".into()).or_default();
    let v = violations(&g);
    assert_eq!(v.len(), 1);
    assert!(
        v[0].contains("`distill` (algorithms) uses `runner` (orchestration)"),
        "{v:?}"
    );
    g.entry("nowhere".into()).or_default();
    assert!(violations(&g)
        .iter()
        .any(|x| x.contains("`nowhere` has no layer")));

    let mut c: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    c.entry("a".into())
        .or_default()
        .insert("b".into(), f.clone());
    c.entry("b".into()).or_default().insert("a".into(), f);
    assert_eq!(cycle(&c).unwrap(), ["a", "b", "a"]);
}
