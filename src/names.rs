//! Metric and task names as they are written to and read from the store.
//!
//! The convention follows lm-evaluation-harness: a zero-shot task writes one row per
//! metric with `task` set to the lm-eval task name and `name` set to the lm-eval metric
//! name, its standard error in the `stderr` column:
//!
//! | task | name | value | stderr |
//! |---|---|---|---|
//! | `piqa` | `acc` | 0.781 | 0.0096 |
//! | `piqa` | `acc_norm` | 0.790 | 0.0095 |
//! | `piqa` | `n` | 1838 | |
//!
//! Accuracies are fractions in [0, 1] (tables print them as percentages). `n` is the
//! number of documents scored (after `eval.limit` / `eval.fraction`); tables print it in
//! their captions. Perplexities use `task` = the corpus and `name` = `ppl_<corpus>`
//! (`wikitext2` / `ppl_wikitext2`, `c4` / `ppl_c4`) with `n` = the number of windows.
//! Anything else a stage measures (seconds, parameter counts, layers) goes in with
//! `task` = "" and a descriptive `name` (see the `RUN_*` constants).
/// Accuracy (lm-eval `acc`).
pub const ACC: &str = "acc";
/// Length-normalised accuracy (lm-eval `acc_norm`).
pub const ACC_NORM: &str = "acc_norm";
/// Number of scored documents (or perplexity windows) of a task.
pub const N: &str = "n";
/// WikiText-2 test perplexity: task [`WIKITEXT2`], metric [`PPL_WIKITEXT2`].
pub const WIKITEXT2: &str = "wikitext2";
pub const PPL_WIKITEXT2: &str = "ppl_wikitext2";
/// C4 validation perplexity: task [`C4`], metric [`PPL_C4`].
pub const C4: &str = "c4";
pub const PPL_C4: &str = "ppl_c4";
/// Held-out WikiText-2 train rows (recovery's validation text, never trained on):
/// task [`WIKITEXT2_VAL`], metric [`PPL_WIKITEXT2_VAL`].
pub const WIKITEXT2_VAL: &str = "wikitext2_val";
pub const PPL_WIKITEXT2_VAL: &str = "ppl_wikitext2_val";
/// Out-of-domain text no recovery trains on (HellaSwag and PIQA gold answers):
/// task [`TASKS_OOD`], metric [`PPL_TASKS_OOD`].
pub const TASKS_OOD: &str = "tasks_ood";
pub const PPL_TASKS_OOD: &str = "ppl_tasks_ood";
/// Every perplexity the tables know, in column order: (task, metric, column label).
pub const PPL_CORPORA: [(&str, &str, &str); 4] = [
    (WIKITEXT2, PPL_WIKITEXT2, "Wiki2 PPL"),
    (C4, PPL_C4, "C4 PPL"),
    (WIKITEXT2_VAL, PPL_WIKITEXT2_VAL, "Val PPL"),
    (TASKS_OOD, PPL_TASKS_OOD, "OOD PPL"),
];
/// Whole-run measurements (task "").
pub const RUN_PARAMS: &str = "params";
pub const RUN_LAYERS: &str = "layers";
pub const RUN_PRUNE_SECONDS: &str = "prune_seconds";
/// Layer forwards of one calibration window during pruning.
pub const RUN_PRUNE_LAYER_PASSES: &str = "prune_layer_passes";
pub const RUN_PRUNE_PEAK_RSS: &str = "prune_peak_rss_mib";
pub const RUN_CALIB_WINDOWS: &str = "calib_windows";

/// Metrics that measure the machine (time, rates, memory), not the model: never
/// compared between runs. `key` is a metric name or a store key (`task/name[context]@step`).
pub fn is_machine_measurement(key: &str) -> bool {
    let name = key.split(['[', '@']).next().unwrap_or(key);
    name.ends_with("_seconds") || name.ends_with("_per_s") || name.ends_with("_mib")
}
pub const RUN_EVAL_SECONDS: &str = "eval_seconds";
pub const RUN_EVAL_LOAD_SECONDS: &str = "eval_load_seconds";
/// Per task: the scoring profile's phases (seconds) and shapes (counts).
pub const PROFILE_TOKENIZE_SECONDS: &str = "profile_tokenize_seconds";
pub const PROFILE_INPUTS_SECONDS: &str = "profile_inputs_seconds";
pub const PROFILE_FORWARD_SECONDS: &str = "profile_forward_seconds";
pub const PROFILE_HEAD_SECONDS: &str = "profile_head_seconds";
pub const PROFILE_OTHER_SECONDS: &str = "profile_other_seconds";
pub const TOKENS_FORWARDED: &str = "tokens_forwarded";
pub const TOKENS_PADDED: &str = "tokens_padded";
pub const HEAD_POSITIONS: &str = "head_positions";
pub const FORWARDS: &str = "forwards";
/// Latency (`eval.latency`): prefill and generation tokens/s, context the protocol and
/// sizes (`protocol=sleb,prefill=...`, or the short protocol's `prompt=<P>,new=<N>`).
pub const RUN_PREFILL_TOKENS_PER_S: &str = "prefill_tokens_per_s";
pub const RUN_DECODE_TOKENS_PER_S: &str = "decode_tokens_per_s";
/// Peak host memory (resident set) and, on CUDA, device memory of a stage that ran (MiB),
/// context `stage=<model|prune|distill|eval>`.
pub const STAGE_PEAK_RSS_MIB: &str = "stage_peak_rss_mib";
pub const STAGE_PEAK_DEVICE_MIB: &str = "stage_peak_device_mib";
/// Layers the prune removed.
pub const RUN_LAYERS_REMOVED: &str = "layers_removed";
/// Recovery (distill stage): wall time, training tokens in all, and their rate.
pub const RUN_RECOVERY_SECONDS: &str = "recovery_seconds";
pub const RUN_RECOVERY_TOKENS: &str = "recovery_tokens";
pub const RUN_RECOVERY_TEXT_TOKENS: &str = "recovery_text_tokens";
pub const RUN_RECOVERY_LAYER_TOKEN_PASSES: &str = "recovery_layer_token_passes";
pub const RUN_RECOVERY_TOKENS_PER_S: &str = "recovery_tokens_per_s";
/// Per trained unit (context `layer=<i>`, or `unit=<k>` for the whole model): the
/// final training loss and the best validation loss.
pub const DISTILL_LOSS: &str = "distill_loss";
pub const DISTILL_VAL_LOSS: &str = "distill_val_loss";

/// What the crate knows of a benchmark besides its loader, in one place: adding a task is
/// a loader (`eval/tasks/<task>.rs`), its line in [`load_task`](crate::eval::tasks::load_task)
/// and its entry here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskInfo {
    /// lm-eval's task name, as `eval.tasks` lists it.
    pub name: &'static str,
    /// Column heading in tables.
    pub label: &'static str,
    /// lm-eval defines `acc_norm` for it (the others only have `acc`).
    pub acc_norm: bool,
    /// The LLM-Pruner convention (`Convention::Mixed`) reports its `acc_norm`.
    pub mixed_reads_norm: bool,
    /// Its column among the paper's seven zero-shot benchmarks (None: not one of them).
    pub paper_column: Option<usize>,
}

const fn task(
    name: &'static str,
    label: &'static str,
    acc_norm: bool,
    mixed_reads_norm: bool,
    paper_column: Option<usize>,
) -> TaskInfo {
    TaskInfo {
        name,
        label,
        acc_norm,
        mixed_reads_norm,
        paper_column,
    }
}

/// Every task an experiment may list in `eval.tasks`, in lm-eval's order.
pub const TASKS: [TaskInfo; 8] = [
    task("piqa", "PIQA", true, false, Some(1)),
    task("hellaswag", "HellaSwag", true, true, Some(2)),
    task("winogrande", "WinoGrande", false, false, Some(3)),
    task("arc_easy", "ARC-e", true, false, Some(4)),
    task("arc_challenge", "ARC-c", true, true, Some(5)),
    task("boolq", "BoolQ", false, false, Some(0)),
    task("openbookqa", "OBQA", true, true, Some(6)),
    task("mmlu", "MMLU", false, false, None),
];

/// The names of [`TASKS`], in the same order.
pub const ALL_TASKS: [&str; TASKS.len()] = {
    let mut names = [""; TASKS.len()];
    let mut i = 0;
    while i < TASKS.len() {
        names[i] = TASKS[i].name;
        i += 1;
    }
    names
};

/// The seven zero-shot benchmarks of the paper, in the column order of its tables
/// (the LLM-Pruner order).
pub const SEVEN_TASKS: [&str; 7] = {
    let mut names = [""; 7];
    let mut i = 0;
    while i < TASKS.len() {
        if let Some(c) = TASKS[i].paper_column {
            names[c] = TASKS[i].name;
        }
        i += 1;
    }
    names
};

/// The same seven in the registry's (lm-eval's) order: the default `eval.tasks` and what
/// `eval --tasks all7` expands to. Derived by column, not by position, so a task added
/// anywhere in [`TASKS`] changes neither (nor any default run's hash).
pub const SEVEN_TASKS_LM_EVAL: [&str; 7] = {
    let mut names = [""; 7];
    let (mut i, mut k) = (0, 0);
    while i < TASKS.len() {
        if TASKS[i].paper_column.is_some() {
            names[k] = TASKS[i].name;
            k += 1;
        }
        i += 1;
    }
    names
};

/// A task's entry in [`TASKS`].
pub fn task_info(task: &str) -> Option<&'static TaskInfo> {
    TASKS.iter().find(|t| t.name == task)
}

/// Column heading of a task in tables.
pub fn task_label(task: &str) -> &str {
    task_info(task).map_or(task, |t| t.label)
}

#[cfg(test)]
mod task_tests {
    use super::*;

    #[test]
    fn the_registry_gives_the_papers_columns_and_lm_evals_metrics() {
        // The paper's tables (LLM-Pruner's order) and lm-eval 0.4's task YAMLs.
        assert_eq!(
            SEVEN_TASKS,
            [
                "boolq",
                "piqa",
                "hellaswag",
                "winogrande",
                "arc_easy",
                "arc_challenge",
                "openbookqa"
            ]
        );
        let norm: Vec<&str> = TASKS
            .iter()
            .filter(|t| t.acc_norm)
            .map(|t| t.name)
            .collect();
        assert_eq!(
            norm,
            [
                "piqa",
                "hellaswag",
                "arc_easy",
                "arc_challenge",
                "openbookqa"
            ]
        );
        let mixed: Vec<&str> = TASKS
            .iter()
            .filter(|t| t.mixed_reads_norm)
            .map(|t| t.name)
            .collect();
        assert_eq!(mixed, ["hellaswag", "arc_challenge", "openbookqa"]);
        assert!(TASKS.iter().all(|t| !t.mixed_reads_norm || t.acc_norm));
        assert_eq!(
            SEVEN_TASKS_LM_EVAL,
            [
                "piqa",
                "hellaswag",
                "winogrande",
                "arc_easy",
                "arc_challenge",
                "boolq",
                "openbookqa"
            ]
        );
        assert_eq!(task_label("arc_challenge"), "ARC-c");
        assert_eq!(task_label("no_such_task"), "no_such_task");
    }
}
