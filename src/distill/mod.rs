//! Recovery of a pruned model against its teacher (the model before pruning).
//!
//! - [`plan`]: which student layers train, and on which teacher boundaries (from the
//!   pruning correspondence);
//! - [`teacher`]: teacher hidden states at those boundaries, computed once and cached;
//! - [`loss`], [`optim`]: the losses, AdamW with warmup + cosine, gradient clipping;
//! - [`layer`]: layer-local training of one student layer (hierarchical distillation);
//! - [`lora`]: the LoRA baseline (LM loss, merged into the weights at the end);
//! - [`progressive`]: merged layers trained in order on the student's own states;
//! - [`kd`]: end-to-end logit KD that trains only the merged layers;
//! - [`run`]: the whole stage, sequential or one worker per device, resumable.

pub mod config;
pub mod data;
pub mod kd;
pub mod layer;
pub mod lora;
pub mod loss;
pub mod optim;
pub mod plan;
pub mod progressive;
pub mod record;
pub mod resume;
pub mod run;
pub mod teacher;
pub mod train;
pub mod workers;

pub use config::{
    Attach, KdSettings, LayerInputs, LoraSettings, LossKind, Losses, Recovery, RecoveryConfig,
    RecoveryMethod, Validation,
};
pub use record::{DistillRecord, LayerRecord};
pub use run::{recover, Event, RecoverInputs};
