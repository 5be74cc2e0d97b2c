//! The autoencoder: a small candle MLP trained to reconstruct standardized features of the
//! site's normal activity, and the score built from it.
//!
//! The network is a *masked* autoencoder: its input is the row with every directional
//! signal hidden (set to the training mean), and it reconstructs the whole row. What it
//! reconstructs for a signal is therefore what the site usually shows for an event of
//! this kind from this kind of user (the context features), never an echo of the signal
//! itself. A signal counts by its one-sided excess over that expectation, plus its tail
//! surprise against the site's training distribution. Each signal's contribution then
//! depends on that signal alone (and the context), and only grows as it grows: raising
//! any directional signal, the others fixed, never lowers the score (a property test
//! below holds the model to it). Per-feature contributions add up to the score and are
//! what the explanation quotes.
//!
//! On disk: `model.safetensors` (weights) + `model.json` (schema, feature names,
//! standardization, threshold, training summary).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Module, Optimizer};
use serde::{Deserialize, Serialize};

use super::features::{Feature, FEATURE_DIRECTION, FEATURE_NAMES, N_FEATURES, SCHEMA_VERSION};
use crate::alerts::AlertKind;
use crate::rng::Rng;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const META_FILE: &str = "model.json";
/// Standardized values are clipped to ±this, so one wild feature cannot swamp a score.
const Z_CLIP: f32 = 12.0;
/// Floor of a feature's standard deviation (binary features that are almost always 0).
const STD_FLOOR: f32 = 0.05;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model folder {dir}: cannot read {file}: {reason}")]
    Read {
        dir: PathBuf,
        file: &'static str,
        reason: String,
    },
    #[error("model folder {dir}: {file} is corrupt: {reason}")]
    Corrupt {
        dir: PathBuf,
        file: &'static str,
        reason: String,
    },
    #[error(
        "model folder {dir}: feature schema mismatch: the model has schema {found_schema} with {found_features} \
         features, this build expects schema {SCHEMA_VERSION} with {N_FEATURES}; retrain it with `fhir-edge train`"
    )]
    Schema {
        dir: PathBuf,
        found_schema: u32,
        found_features: usize,
    },
    #[error("cannot write model to {dir}: {reason}")]
    Write { dir: PathBuf, reason: String },
    #[error("training failed: {0}")]
    Train(String),
    #[error("inference failed: {0}")]
    Infer(String),
}

impl ModelError {
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::Read { .. } => "model_missing",
            ModelError::Corrupt { .. } => "model_corrupt",
            ModelError::Schema { .. } => "model_schema_mismatch",
            ModelError::Write { .. } => "model_write",
            ModelError::Train(_) => "train_failed",
            ModelError::Infer(_) => "inference_failed",
        }
    }
}

fn candle_err(e: candle_core::Error) -> ModelError {
    ModelError::Infer(e.to_string())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// The events of the history the model learned from.
    pub events: usize,
    pub epochs: usize,
    pub seed: u64,
    pub final_loss: f32,
    pub threshold_percentile: f32,
    pub inputs: Vec<String>,
    pub trained_at: String,
    pub seconds: f32,
    /// Whether the training rows had a care context (`Context::set_care`): only then does
    /// the model know what its care signals look like at the site, and only then are they
    /// used when scoring (a model trained without would take every access outside care for
    /// something never seen).
    #[serde(default)]
    pub care_context: bool,
    /// How the threshold was fitted to the site's queue budget (`None`: not fitted — a
    /// model from before, a budget of 0, or a window too short to judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_budget: Option<BudgetFit>,
    /// How the calibration weighted the loudest user-hours (`super::calibration`; `None`:
    /// every row counted once, as a model from before did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<super::calibration::CalibrationCap>,
    /// How many of the history's `events` a first model alerted on and the second pass
    /// left out of the baselines (`super::sift`; `None`: one pass, as a model from before
    /// did, or nothing alerted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_out: Option<usize>,
}

/// How the threshold was fitted to the site's queue budget (`super::budget`; kept in the
/// model's training summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetFit {
    /// Queued cases a day per 100 active users asked for.
    pub budget: f64,
    /// The days replayed (the second half of the training window) and the users active in
    /// them.
    pub days: f64,
    pub users: u64,
    /// Queued cases a day per 100 users at the percentile's threshold, and at the fitted
    /// ones (`ModelMeta::raises`).
    pub before: f64,
    pub after: f64,
}

/// Per behaviour, the factor its alert threshold is raised by above the percentile's,
/// fitted to the site's queue budget (`super::budget`). An event is judged against the
/// threshold of its strongest behaviour, the first reason of its explanation; a behaviour
/// not named keeps the percentile's threshold. On disk: `{"after_hours": 1.5, …}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Raises(pub BTreeMap<AlertKind, f32>);

impl Raises {
    /// The factor for events whose strongest behaviour is `kind` (1: not raised).
    pub fn of(&self, kind: AlertKind) -> f32 {
        self.0.get(&kind).copied().unwrap_or(1.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Raise `kind`'s factor `by` times.
    pub fn raise(&mut self, kind: AlertKind, by: f32) {
        let next = self.of(kind) * by;
        self.0.insert(kind, next);
    }

    /// `after_hours 1.50×, cross_department 1.10×`, largest first.
    pub fn describe(&self) -> String {
        let mut v: Vec<(AlertKind, f32)> = self.0.iter().map(|(k, r)| (*k, *r)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.iter()
            .map(|(k, r)| format!("{} {r:.2}×", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl BudgetFit {
    /// Whether the budget was met within the largest raise.
    pub fn met(&self) -> bool {
        self.after <= self.budget
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMeta {
    pub schema_version: u32,
    pub features: Vec<String>,
    pub hidden: Vec<usize>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Scale of the reconstruction part: its calibration percentile on the training data.
    pub ae_scale: f32,
    /// Per feature: values at the tail probabilities `TAIL_P` (upper tail for +1 features,
    /// lower for -1), then the extreme seen in training; empty for context features.
    pub tails: Vec<Vec<f32>>,
    /// Scale of the tail-surprise part: its calibration percentile on the training data.
    pub tail_scale: f32,
    /// Combined score at the calibration percentile of the training scores (a model
    /// fitted before behaviours were raised one by one has its queue-budget raise in it).
    pub threshold: f32,
    /// Per behaviour, how far its threshold is raised to fit the site's queue budget
    /// (`training.queue_budget`); none when not fitted.
    #[serde(default, skip_serializing_if = "Raises::is_empty")]
    pub raises: Raises,
    pub training: TrainingSummary,
}

impl ModelMeta {
    /// How the model's thresholds stand to the site's queue budget, in a line (`fhir-edge
    /// status`): not fitted, met at the percentile's threshold, met by the raises, or not
    /// met with the largest raises allowed.
    pub fn queue_budget_summary(&self) -> String {
        let Some(fit) = &self.training.queue_budget else {
            return "not fitted (a model trained before the budget, a budget of 0, or a training \
                    window too short to replay): the percentile's threshold"
                .into();
        };
        let budget = format!(
            "{} cases a day per 100 users, replayed over {:.1} days ({} users active)",
            fit.budget, fit.days, fit.users
        );
        // A model fitted before behaviours were raised one by one kept its one raise in
        // `threshold` and names none: what it did shows in `before` against the budget.
        // A fit that kept every threshold (episodes of a day, not routine work, fill its
        // queue; `budget::fit`) queues as many as before.
        let single = fit.before > fit.budget && fit.after < fit.before;
        match (self.raises.is_empty(), fit.met()) {
            (true, _) if single => format!(
                "{budget}: {} with every threshold raised together, an older model's fit \
                 ({:.2} → {:.2})",
                if fit.met() { "met" } else { "NOT MET" },
                fit.before,
                fit.after
            ),
            (true, true) => format!(
                "{budget}: met at the percentile's threshold ({:.2} would have been queued)",
                fit.before
            ),
            (true, false) => format!(
                "{budget}: NOT MET ({:.2} would have been queued), thresholds kept: the queue \
                 fills with episodes of a day spread over many users, which a raise would hide, \
                 not with work flagged day after day; open them, allow-list what is routine or \
                 raise [alerts] case_budget",
                fit.before
            ),
            (false, true) => format!(
                "{budget}: met with thresholds raised for {} ({:.2} → {:.2})",
                self.raises.describe(),
                fit.before,
                fit.after
            ),
            (false, false) => format!(
                "{budget}: NOT MET with the largest raises allowed, {} ({:.2} → {:.2}), episodes \
                 of a day keeping their threshold; allow-list what is routine or raise [alerts] \
                 case_budget, then retrain",
                self.raises.describe(),
                fit.before,
                fit.after
            ),
        }
    }

    /// The threshold `s` is judged against: the percentile's raised for its strongest
    /// behaviour (`raises`), or the percentile's alone when it shows a signal beyond the
    /// training window, which the replay the raises were fitted on could not hold.
    pub fn threshold_for(&self, s: &Scored) -> f32 {
        match s.beyond_seen || self.raises.is_empty() {
            true => self.threshold,
            false => self.threshold * self.raises.of(s.strongest_kind()),
        }
    }
}

/// Tail probabilities at which training quantiles are kept.
pub const TAIL_P: [f32; 12] = [
    0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001,
];
/// Surprise (in decimal digits of improbability) of a value beyond anything seen in training.
const BEYOND_SEEN: f32 = 5.0;
/// Surprises up to this (p ≥ 5%) are ordinary and count nothing, so many small deviations
/// cannot add up to an alert.
const ORDINARY: f32 = 1.3;
/// The tail part of a value beyond anything seen in training (no step of the grid reaches
/// it: the last is 4).
const BEYOND_SEEN_PART: f32 = BEYOND_SEEN - ORDINARY;

/// How improbable `x` is on its suspicious side, in -log10(probability), from the grid.
fn tail_surprise(grid: &[f32], dir: i8, x: f32) -> f32 {
    if grid.len() != TAIL_P.len() + 1 || dir == 0 {
        return 0.0;
    }
    let beyond = |v: f32| if dir > 0 { x > v } else { x < v };
    if beyond(grid[TAIL_P.len()]) {
        return BEYOND_SEEN;
    }
    let mut s = 0.0;
    for (j, p) in TAIL_P.iter().enumerate() {
        if beyond(grid[j]) {
            s = -p.log10();
        } else {
            break;
        }
    }
    s
}

fn n_signal() -> f32 {
    FEATURE_DIRECTION.iter().filter(|d| **d != 0).count() as f32
}

/// A loaded model, ready to score batches.
pub struct Model {
    pub meta: ModelMeta,
    layers: Vec<candle_nn::Linear>,
    device: Device,
}

/// One event's score and per-feature contributions: squared standardized reconstruction
/// errors, counting only excesses for features where only "more" is suspicious.
#[derive(Debug, Clone)]
pub struct Scored {
    pub score: f32,
    pub contributions: [f32; N_FEATURES],
    /// A signal of the event lies beyond anything the training window showed (an export
    /// where the site never exported, a break longer than any before): nothing like it
    /// was in the work the queue budget was fitted on, so no raise applies to it.
    pub beyond_seen: bool,
}

impl Scored {
    /// The strongest behaviour: the kind of the largest part, the first reason of the
    /// explanation (the first of equals, as the explanation's stable sort takes it).
    pub fn strongest_kind(&self) -> AlertKind {
        let mut best: Option<(usize, f32)> = None;
        for (i, c) in self.contributions.iter().enumerate() {
            if best.is_none_or(|(_, b)| *c > b) {
                best = Some((i, *c));
            }
        }
        best.map_or(AlertKind::UnusualPattern, |(i, _)| Feature::ALL[i].kind())
    }
}

/// Per feature of one row: the reconstruction part and the tail part of the score.
type RawParts = ([f32; N_FEATURES], [f32; N_FEATURES]);

fn layer_sizes(hidden: &[usize]) -> Vec<(usize, usize)> {
    // in → h0 → h1 → ... → h_last(bottleneck) → ... → h0 → in
    let mut dims = vec![N_FEATURES];
    dims.extend_from_slice(hidden);
    dims.extend(hidden.iter().rev().skip(1).copied());
    dims.push(N_FEATURES);
    dims.windows(2).map(|w| (w[0], w[1])).collect()
}

fn forward(layers: &[candle_nn::Linear], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    for (i, l) in layers.iter().enumerate() {
        h = l.forward(&h)?;
        if i + 1 < layers.len() {
            h = h.tanh()?;
        }
    }
    Ok(h)
}

impl Model {
    pub fn standardize(&self, x: &[f32; N_FEATURES]) -> [f32; N_FEATURES] {
        standardize(&self.meta.mean, &self.meta.std, x)
    }

    /// Per-feature raw parts of a batch: one-sided squared reconstruction errors of signal
    /// features, and tail surprises (-log10 training probability), both unscaled.
    fn raw_parts(&self, rows: &[[f32; N_FEATURES]]) -> Result<Vec<RawParts>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut flat = Vec::with_capacity(rows.len() * N_FEATURES);
        let mut input = Vec::with_capacity(rows.len() * N_FEATURES);
        for r in rows {
            let z = self.standardize(r);
            flat.extend_from_slice(&z);
            input.extend_from_slice(&masked(&z));
        }
        let shape = (rows.len(), N_FEATURES);
        let x = Tensor::from_vec(flat, shape, &self.device).map_err(candle_err)?;
        let input = Tensor::from_vec(input, shape, &self.device).map_err(candle_err)?;
        let y = forward(&self.layers, &input).map_err(candle_err)?;
        let diff = (&x - y).map_err(candle_err)?;
        let diff: Vec<f32> = diff
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(candle_err)?;
        Ok(diff
            .chunks_exact(N_FEATURES)
            .zip(rows)
            .map(|(c, raw)| {
                let mut ae = [0f32; N_FEATURES];
                let mut tail = [0f32; N_FEATURES];
                for i in 0..N_FEATURES {
                    let dir = FEATURE_DIRECTION[i];
                    // A signal at its floor (nothing of it in the event: no failed login,
                    // no export, no care link) shows no excess, whatever the network
                    // expected of it: it counts nothing and no reason names it.
                    let d = match dir {
                        0 => 0.0,
                        1 if raw[i] <= 0.0 => 0.0,
                        1 => c[i].max(0.0),
                        _ if raw[i] >= 0.0 => 0.0,
                        _ => c[i].min(0.0),
                    };
                    ae[i] = d * d / n_signal();
                    tail[i] = (tail_surprise(&self.meta.tails[i], dir, raw[i]) - ORDINARY).max(0.0);
                }
                (ae, tail)
            })
            .collect())
    }

    /// Calibrate on feature `rows`: each part's scale is its percentile `p` on them, then
    /// the threshold is the same percentile of the combined score (computed from the same
    /// parts, one pass of the network over the rows); each row counted by its weight, when
    /// given (`super::calibration`).
    fn calibrate(
        &mut self,
        rows: &[[f32; N_FEATURES]],
        weights: Option<&[f32]>,
        p: f32,
    ) -> Result<(), ModelError> {
        let mut parts = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(4096) {
            parts.extend(
                self.raw_parts(chunk)?
                    .into_iter()
                    .map(|(a, t)| (a.iter().sum::<f32>(), t.iter().sum::<f32>())),
            );
        }
        let pct = |mut xs: Vec<f32>| match weights {
            None => super::calibration::percentile(&mut xs, p),
            Some(w) => super::calibration::weighted_percentile(&xs, w, p),
        };
        let ae_scale = pct(parts.iter().map(|x| x.0).collect()).max(1e-6);
        let tail_scale = pct(parts.iter().map(|x| x.1).collect()).max(0.1);
        let scores: Vec<f32> = parts
            .iter()
            .map(|(a, t)| 0.5 * a / ae_scale + 0.5 * t / tail_scale)
            .collect();
        self.meta.ae_scale = ae_scale;
        self.meta.tail_scale = tail_scale;
        self.meta.threshold = pct(scores).max(1e-6);
        Ok(())
    }

    /// Score a batch of raw feature rows: the mean of the reconstruction part and the
    /// tail part, each divided by its calibration scale. Contributions add up to the score.
    pub fn score(&self, rows: &[[f32; N_FEATURES]]) -> Result<Vec<Scored>, ModelError> {
        let (ka, kt) = (0.5 / self.meta.ae_scale, 0.5 / self.meta.tail_scale);
        Ok(self
            .raw_parts(rows)?
            .into_iter()
            .map(|(ae, tail)| {
                let mut contributions = [0f32; N_FEATURES];
                for i in 0..N_FEATURES {
                    contributions[i] = ae[i] * ka + tail[i] * kt;
                }
                Scored {
                    score: contributions.iter().sum(),
                    contributions,
                    beyond_seen: tail.iter().any(|t| *t >= BEYOND_SEEN_PART),
                }
            })
            .collect())
    }

    pub fn load(dir: &Path) -> Result<Model, ModelError> {
        let meta_path = dir.join(META_FILE);
        let meta_text = std::fs::read_to_string(&meta_path).map_err(|e| ModelError::Read {
            dir: dir.to_path_buf(),
            file: META_FILE,
            reason: e.to_string(),
        })?;
        let meta: ModelMeta =
            serde_json::from_str(&meta_text).map_err(|e| ModelError::Corrupt {
                dir: dir.to_path_buf(),
                file: META_FILE,
                reason: e.to_string(),
            })?;
        if meta.schema_version != SCHEMA_VERSION
            || meta.features.len() != N_FEATURES
            || meta.features.iter().zip(FEATURE_NAMES).any(|(a, b)| a != b)
        {
            return Err(ModelError::Schema {
                dir: dir.to_path_buf(),
                found_schema: meta.schema_version,
                found_features: meta.features.len(),
            });
        }
        let corrupt = |reason: String| ModelError::Corrupt {
            dir: dir.to_path_buf(),
            file: META_FILE,
            reason,
        };
        if meta.mean.len() != N_FEATURES
            || meta.std.len() != N_FEATURES
            || meta.tails.len() != N_FEATURES
        {
            return Err(corrupt(
                "standardization vectors have the wrong length".into(),
            ));
        }
        for (name, v) in [
            ("threshold", meta.threshold),
            ("ae_scale", meta.ae_scale),
            ("tail_scale", meta.tail_scale),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(corrupt(format!("{name} is not a positive number")));
            }
        }
        if let Some((k, _)) = meta
            .raises
            .0
            .iter()
            .find(|(_, r)| !(r.is_finite() && **r >= 1.0))
        {
            return Err(corrupt(format!(
                "the raise of {} is not a number from 1 up",
                k.as_str()
            )));
        }
        if meta.hidden.is_empty() || meta.hidden.iter().any(|h| *h == 0 || *h > 1024) {
            return Err(corrupt("hidden layer sizes are invalid".into()));
        }
        let wpath = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&wpath).map_err(|e| ModelError::Read {
            dir: dir.to_path_buf(),
            file: WEIGHTS_FILE,
            reason: e.to_string(),
        })?;
        let device = Device::Cpu;
        let wcorrupt = |reason: String| ModelError::Corrupt {
            dir: dir.to_path_buf(),
            file: WEIGHTS_FILE,
            reason,
        };
        let tensors = candle_core::safetensors::load_buffer(&bytes, &device)
            .map_err(|e| wcorrupt(e.to_string()))?;
        let mut layers = Vec::new();
        for (i, (din, dout)) in layer_sizes(&meta.hidden).into_iter().enumerate() {
            let w = tensors
                .get(&format!("layer{i}.weight"))
                .ok_or_else(|| wcorrupt(format!("missing layer{i}.weight")))?;
            let b = tensors
                .get(&format!("layer{i}.bias"))
                .ok_or_else(|| wcorrupt(format!("missing layer{i}.bias")))?;
            if w.dims() != [dout, din] || b.dims() != [dout] || w.dtype() != DType::F32 {
                return Err(wcorrupt(format!(
                    "layer{i} has shape {:?}, expected [{dout}, {din}]",
                    w.dims()
                )));
            }
            let finite = w
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| wcorrupt(e.to_string()))?
                .iter()
                .all(|v| v.is_finite());
            if !finite {
                return Err(wcorrupt(format!("layer{i} holds non-finite weights")));
            }
            layers.push(candle_nn::Linear::new(w.clone(), Some(b.clone())));
        }
        Ok(Model {
            meta,
            layers,
            device,
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let werr = |reason: String| ModelError::Write {
            dir: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| werr(e.to_string()))?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            tensors.insert(format!("layer{i}.weight"), l.weight().clone());
            tensors.insert(format!("layer{i}.bias"), l.bias().expect("bias").clone());
        }
        let tmp = dir.join(format!("{WEIGHTS_FILE}.tmp"));
        candle_core::safetensors::save(&tensors, &tmp).map_err(|e| werr(e.to_string()))?;
        std::fs::rename(&tmp, dir.join(WEIGHTS_FILE)).map_err(|e| werr(e.to_string()))?;
        let json = serde_json::to_string_pretty(&self.meta).expect("meta serialises");
        let tmp = dir.join(format!("{META_FILE}.tmp"));
        std::fs::write(&tmp, json + "\n").map_err(|e| werr(e.to_string()))?;
        std::fs::rename(&tmp, dir.join(META_FILE)).map_err(|e| werr(e.to_string()))?;
        Ok(())
    }
}

/// The network's input for a standardized row: directional signals hidden (0 is the
/// training mean), context features kept.
fn masked(z: &[f32; N_FEATURES]) -> [f32; N_FEATURES] {
    let mut m = *z;
    for (v, d) in m.iter_mut().zip(FEATURE_DIRECTION) {
        if d != 0 {
            *v = 0.0;
        }
    }
    m
}

pub fn standardize(mean: &[f32], std: &[f32], x: &[f32; N_FEATURES]) -> [f32; N_FEATURES] {
    let mut z = [0f32; N_FEATURES];
    for i in 0..N_FEATURES {
        z[i] = ((x[i] - mean[i]) / std[i]).clamp(-Z_CLIP, Z_CLIP);
    }
    z
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    pub seed: u64,
    pub hidden: Vec<usize>,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Threshold = this percentile of the training scores.
    pub threshold_percentile: f32,
    /// Each training row's weight in the calibration percentiles, one per row
    /// (`super::calibration::user_hour_weights`); `None`: every row counts once.
    pub calibration: Option<super::calibration::Weights>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 20,
            seed: 1,
            hidden: vec![32, 8],
            batch_size: 256,
            learning_rate: 3e-3,
            threshold_percentile: 99.5,
            calibration: None,
        }
    }
}

/// Train on feature rows; `progress(epoch, loss)` is called after each epoch.
pub fn train(
    rows: &[[f32; N_FEATURES]],
    opts: &TrainOptions,
    inputs: Vec<String>,
    mut progress: impl FnMut(usize, f32),
) -> Result<Model, ModelError> {
    let started = std::time::Instant::now();
    if rows.len() < 100 {
        return Err(ModelError::Train(format!(
            "need at least 100 events to train, got {}",
            rows.len()
        )));
    }
    let weights = opts.calibration.as_ref().map(|w| &w.per_row[..]);
    if let Some(w) = weights.filter(|w| w.len() != rows.len()) {
        return Err(ModelError::Train(format!(
            "{} calibration weights for {} rows",
            w.len(),
            rows.len()
        )));
    }
    let terr = |e: candle_core::Error| ModelError::Train(e.to_string());
    let n = rows.len();
    let mut mean = vec![0f64; N_FEATURES];
    for r in rows {
        for i in 0..N_FEATURES {
            mean[i] += r[i] as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut var = vec![0f64; N_FEATURES];
    for r in rows {
        for i in 0..N_FEATURES {
            var[i] += (r[i] as f64 - mean[i]).powi(2);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|m| *m as f32).collect();
    let std: Vec<f32> = var
        .iter()
        .map(|v| ((v / n as f64).sqrt() as f32).max(STD_FLOOR))
        .collect();
    let z: Vec<[f32; N_FEATURES]> = rows.iter().map(|r| standardize(&mean, &std, r)).collect();
    let z_in: Vec<[f32; N_FEATURES]> = z.iter().map(masked).collect();

    let device = Device::Cpu;
    let mut rng = Rng::new(opts.seed);
    let mut vars = Vec::new();
    let mut layers = Vec::new();
    for (din, dout) in layer_sizes(&opts.hidden) {
        // Xavier-uniform init from our own seeded generator: reproducible across versions.
        let a = (6.0 / (din + dout) as f64).sqrt();
        let w: Vec<f32> = (0..din * dout)
            .map(|_| ((rng.f64() * 2.0 - 1.0) * a) as f32)
            .collect();
        let w = Var::from_tensor(&Tensor::from_vec(w, (dout, din), &device).map_err(terr)?)
            .map_err(terr)?;
        let b = Var::zeros(dout, DType::F32, &device).map_err(terr)?;
        layers.push(candle_nn::Linear::new(
            w.as_tensor().clone(),
            Some(b.as_tensor().clone()),
        ));
        vars.push(w);
        vars.push(b);
    }
    let mut opt = candle_nn::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr: opts.learning_rate,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )
    .map_err(terr)?;
    let mut order: Vec<usize> = (0..n).collect();
    let bs = opts.batch_size.max(8);
    let mut last_loss = 0f32;
    let mut flat = Vec::with_capacity(bs * N_FEATURES);
    let mut flat_in = Vec::with_capacity(bs * N_FEATURES);
    for epoch in 0..opts.epochs {
        // Fisher–Yates with the seeded generator.
        for i in (1..n).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut total = 0f64;
        let mut batches = 0usize;
        for chunk in order.chunks(bs) {
            flat.clear();
            flat_in.clear();
            for &i in chunk {
                flat.extend_from_slice(&z[i]);
                flat_in.extend_from_slice(&z_in[i]);
            }
            let x = Tensor::from_slice(&flat, (chunk.len(), N_FEATURES), &device).map_err(terr)?;
            let x_in =
                Tensor::from_slice(&flat_in, (chunk.len(), N_FEATURES), &device).map_err(terr)?;
            let y = forward(&layers, &x_in).map_err(terr)?;
            let loss = candle_nn::loss::mse(&y, &x).map_err(terr)?;
            opt.backward_step(&loss).map_err(terr)?;
            total += loss.to_scalar::<f32>().map_err(terr)? as f64;
            batches += 1;
        }
        last_loss = (total / batches as f64) as f32;
        if !last_loss.is_finite() {
            return Err(ModelError::Train("loss diverged (not finite)".into()));
        }
        progress(epoch + 1, last_loss);
    }
    // Tail grids from the training distribution of each signal feature.
    let mut tails = Vec::with_capacity(N_FEATURES);
    let mut col = Vec::with_capacity(n);
    for i in 0..N_FEATURES {
        let dir = FEATURE_DIRECTION[i];
        if dir == 0 {
            tails.push(Vec::new());
            continue;
        }
        col.clear();
        col.extend(rows.iter().map(|r| r[i]));
        col.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f32| col[((p * (n - 1) as f32).round() as usize).min(n - 1)];
        let mut grid: Vec<f32> = TAIL_P
            .iter()
            .map(|p| if dir > 0 { q(1.0 - p) } else { q(*p) })
            .collect();
        grid.push(if dir > 0 { col[n - 1] } else { col[0] });
        tails.push(grid);
    }
    let mut model = Model {
        meta: ModelMeta {
            schema_version: SCHEMA_VERSION,
            features: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
            hidden: opts.hidden.clone(),
            mean,
            std,
            ae_scale: 1.0,
            tails,
            tail_scale: 1.0,
            threshold: 1.0,
            raises: Raises::default(),
            training: TrainingSummary {
                events: n,
                epochs: opts.epochs,
                seed: opts.seed,
                final_loss: last_loss,
                threshold_percentile: opts.threshold_percentile,
                inputs,
                trained_at: crate::clock::fmt_ms(chrono::Utc::now()),
                seconds: 0.0,
                care_context: false,
                queue_budget: None,
                calibration: opts.calibration.as_ref().map(|w| w.cap),
                left_out: None,
            },
        },
        layers,
        device,
    };
    model.calibrate(rows, weights, opts.threshold_percentile)?;
    model.meta.training.seconds = started.elapsed().as_secs_f32();
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, seed: u64) -> Vec<[f32; N_FEATURES]> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                let mut r = [0f32; N_FEATURES];
                let a = rng.normal() as f32;
                for (i, v) in r.iter_mut().enumerate() {
                    // Correlated features the autoencoder can learn.
                    *v = a * (i as f32 / 10.0) + 0.1 * rng.normal() as f32;
                }
                r
            })
            .collect()
    }

    #[test]
    fn trains_saves_loads_and_flags_outliers() {
        let data = rows(2000, 3);
        let opts = TrainOptions {
            epochs: 8,
            ..Default::default()
        };
        let m = train(&data, &opts, vec![], |_, _| {}).unwrap();
        let d = tempfile::tempdir().unwrap();
        m.save(d.path()).unwrap();
        let m2 = Model::load(d.path()).unwrap();
        let s1 = m.score(&data[..10]).unwrap();
        let s2 = m2.score(&data[..10]).unwrap();
        for (a, b) in s1.iter().zip(&s2) {
            assert!((a.score - b.score).abs() < 1e-5);
        }
        let mut odd = data[0];
        odd[5] = 40.0;
        let s = m2.score(&[odd]).unwrap();
        assert!(
            s[0].score > m2.meta.threshold * 2.0,
            "{} vs {}",
            s[0].score,
            m2.meta.threshold
        );
        let top = s[0]
            .contributions
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(top, 5, "the odd feature explains the score");
    }

    /// One user's bulk hour in the training rows (2 % of them, all alike) sets the tail the
    /// threshold is read from; weighted down to what a busy hour counts
    /// (`calibration::user_hour_weights`), it no longer does, and its likes are flagged.
    #[test]
    fn calibration_weights_keep_a_bulk_hour_from_setting_the_threshold() {
        use crate::detector::calibration::{CalibrationCap, Weights};
        let mut data = rows(2000, 3);
        let mut odd = data[0];
        odd[5] = 40.0;
        data.extend(std::iter::repeat_n(odd, 40));
        let opts = TrainOptions {
            epochs: 8,
            ..Default::default()
        };
        let plain = train(&data, &opts, vec![], |_, _| {}).unwrap();
        let cap = CalibrationCap {
            events_per_user_hour: 1,
            user_hours_capped: 1,
            events_capped: 40,
        };
        let mut per_row = vec![1.0; 2000];
        per_row.extend(std::iter::repeat_n(1.0 / 40.0, 40));
        let weighted = TrainOptions {
            calibration: Some(Weights { per_row, cap }),
            ..opts.clone()
        };
        let capped = train(&data, &weighted, vec![], |_, _| {}).unwrap();
        assert_eq!(plain.meta.training.calibration, None);
        assert_eq!(capped.meta.training.calibration, Some(cap));
        let s_plain = plain.score(&[odd]).unwrap()[0].score;
        let s_capped = capped.score(&[odd]).unwrap()[0].score;
        assert!(
            s_plain <= plain.meta.threshold,
            "counted row by row, the bulk hour is the site's tail: {s_plain} vs {}",
            plain.meta.threshold
        );
        assert!(
            s_capped > capped.meta.threshold,
            "weighted, it is above the site's tail: {s_capped} vs {}",
            capped.meta.threshold
        );
        let short = TrainOptions {
            calibration: Some(Weights {
                per_row: vec![1.0; 10],
                cap,
            }),
            ..opts
        };
        assert!(train(&data, &short, vec![], |_, _| {}).is_err());
    }

    /// A model trained one epoch on `data`: for what is kept with a model, not its scores.
    fn one_epoch(data: &[[f32; N_FEATURES]]) -> Model {
        let opts = TrainOptions {
            epochs: 1,
            ..Default::default()
        };
        train(data, &opts, vec![], |_, _| {}).unwrap()
    }

    /// One small model for the property tests (training takes a second).
    fn shared_model() -> &'static Model {
        static M: std::sync::OnceLock<Model> = std::sync::OnceLock::new();
        M.get_or_init(|| {
            let opts = TrainOptions {
                epochs: 4,
                ..Default::default()
            };
            train(&rows(3000, 11), &opts, vec![], |_, _| {}).unwrap()
        })
    }

    proptest::proptest! {
        /// Raising any directional signal in its suspicious direction, the others fixed,
        /// never lowers the score; context features may move it either way.
        #[test]
        fn raising_a_signal_never_lowers_the_score(
            base in proptest::collection::vec(-30f32..30.0, N_FEATURES),
            feature in 0..N_FEATURES,
            step in 0f32..40.0,
        ) {
            let m = shared_model();
            let dir = FEATURE_DIRECTION[feature];
            proptest::prop_assume!(dir != 0);
            let mut x = [0f32; N_FEATURES];
            x.copy_from_slice(&base);
            let mut raised = x;
            raised[feature] += dir as f32 * step;
            let s = m.score(&[x, raised]).unwrap();
            proptest::prop_assert!(
                s[1].score >= s[0].score - 1e-5 * s[0].score.abs().max(1.0),
                "feature {} raised by {}: {} -> {}", FEATURE_NAMES[feature], step, s[0].score, s[1].score
            );
        }
    }

    #[test]
    fn a_signal_beyond_the_training_window_is_marked_and_raises_round_trip() {
        let m = shared_model();
        let data = rows(3000, 11);
        // Every training row lies within what training saw.
        assert!(m.score(&data).unwrap().iter().all(|s| !s.beyond_seen));
        // A signal past the largest the training rows showed.
        let i = FEATURE_DIRECTION.iter().position(|d| *d == 1).unwrap();
        let most = data.iter().map(|r| r[i]).fold(f32::MIN, f32::max);
        let mut odd = data[0];
        odd[i] = most + 1.0;
        assert!(m.score(&[odd]).unwrap()[0].beyond_seen);
        // Raises are kept with the model and must be numbers from 1 up.
        let mut m = one_epoch(&rows(300, 6));
        m.meta.raises.raise(AlertKind::AfterHours, 1.5);
        let d = tempfile::tempdir().unwrap();
        m.save(d.path()).unwrap();
        let back = Model::load(d.path()).unwrap();
        assert_eq!(back.meta.raises.of(AlertKind::AfterHours), 1.5);
        assert_eq!(back.meta.raises.of(AlertKind::MassExport), 1.0);
        m.meta.raises.raise(AlertKind::MassExport, 0.5);
        m.save(d.path()).unwrap();
        let err = Model::load(d.path())
            .err()
            .expect("a raise under 1 is refused");
        assert!(err.to_string().contains("mass_export"), "{err}");
    }

    #[test]
    fn the_queue_budget_is_summed_up_as_fitted() {
        let mut meta = one_epoch(&rows(300, 8)).meta;
        assert!(meta.queue_budget_summary().starts_with("not fitted"));
        let mut fit = BudgetFit {
            budget: 2.5,
            days: 13.9,
            users: 147,
            before: 2.26,
            after: 2.26,
        };
        meta.training.queue_budget = Some(fit.clone());
        assert_eq!(
            meta.queue_budget_summary(),
            "2.5 cases a day per 100 users, replayed over 13.9 days (147 users active): met at \
             the percentile's threshold (2.26 would have been queued)"
        );
        fit.before = 3.84;
        fit.after = 2.40;
        meta.training.queue_budget = Some(fit.clone());
        meta.raises.raise(AlertKind::NewSource, 1.34);
        meta.raises.raise(AlertKind::FamilySnooping, 1.28);
        assert!(
            meta.queue_budget_summary().ends_with(
                "met with thresholds raised for new_source 1.34×, family_snooping 1.28× (3.84 → 2.40)"
            ),
            "{}",
            meta.queue_budget_summary()
        );
        fit.after = 3.1;
        meta.training.queue_budget = Some(fit.clone());
        assert!(meta
            .queue_budget_summary()
            .contains(": NOT MET with the largest raises"));
        // An older model: its one raise is in the threshold, no behaviour is named.
        meta.raises = Raises::default();
        fit.after = 2.3;
        meta.training.queue_budget = Some(fit.clone());
        assert!(
            meta.queue_budget_summary().ends_with(
                ": met with every threshold raised together, an older model's fit (3.84 → 2.30)"
            ),
            "{}",
            meta.queue_budget_summary()
        );
        // Missed, and no threshold raised (episodes of a day fill the queue): not an older
        // model's fit, and it says why.
        fit.after = fit.before;
        meta.training.queue_budget = Some(fit);
        assert!(
            meta.queue_budget_summary()
                .contains(": NOT MET (3.84 would have been queued), thresholds kept: the queue"),
            "{}",
            meta.queue_budget_summary()
        );
    }

    #[test]
    fn a_model_fitted_with_one_raise_for_all_still_loads_and_says_so() {
        let m = one_epoch(&rows(300, 9));
        let d = tempfile::tempdir().unwrap();
        m.save(d.path()).unwrap();
        // As such a model was written: the raise in `threshold` and in the fit, no `raises`.
        let path = d.path().join(META_FILE);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["training"]["queue_budget"] = serde_json::json!({
            "budget": 2.5, "days": 12.8, "users": 147, "before": 3.84, "after": 2.4, "raised": 1.41
        });
        std::fs::write(&path, v.to_string()).unwrap();
        let back = Model::load(d.path()).unwrap();
        assert!(back.meta.raises.is_empty());
        assert!(
            back.meta
                .queue_budget_summary()
                .contains("met with every threshold raised together"),
            "{}",
            back.meta.queue_budget_summary()
        );
    }

    #[test]
    fn an_event_is_judged_against_its_strongest_behaviours_threshold() {
        let mut meta = one_epoch(&rows(300, 7)).meta;
        let mut contributions = [0f32; N_FEATURES];
        contributions[Feature::NewSourceIp.index()] = 2.0;
        contributions[Feature::HourRarityUser.index()] = 1.0;
        let s = Scored {
            score: 3.0,
            contributions,
            beyond_seen: false,
        };
        assert_eq!(s.strongest_kind(), AlertKind::NewSource);
        let base = meta.threshold;
        assert_eq!(meta.threshold_for(&s), base, "nothing raised");
        meta.raises.raise(AlertKind::AfterHours, 1.5);
        assert_eq!(meta.threshold_for(&s), base, "another behaviour raised");
        meta.raises.raise(AlertKind::NewSource, 1.2);
        assert_eq!(meta.threshold_for(&s), base * 1.2);
        let beyond = Scored {
            beyond_seen: true,
            ..s
        };
        assert_eq!(
            meta.threshold_for(&beyond),
            base,
            "beyond the window: unraised"
        );
    }

    #[test]
    fn same_seed_same_model() {
        let data = rows(500, 4);
        let opts = TrainOptions {
            epochs: 2,
            ..Default::default()
        };
        let a = train(&data, &opts, vec![], |_, _| {}).unwrap();
        let b = train(&data, &opts, vec![], |_, _| {}).unwrap();
        assert_eq!(a.meta.threshold, b.meta.threshold);
    }

    #[test]
    fn bad_models_are_refused_clearly() {
        let m = one_epoch(&rows(300, 5));
        let d = tempfile::tempdir().unwrap();
        m.save(d.path()).unwrap();
        // Wrong schema.
        let mut meta = m.meta.clone();
        meta.features.pop();
        std::fs::write(
            d.path().join(META_FILE),
            serde_json::to_string(&meta).unwrap(),
        )
        .unwrap();
        let e = Model::load(d.path()).err().unwrap();
        assert_eq!(e.kind(), "model_schema_mismatch");
        assert!(e.to_string().contains("retrain"), "{e}");
        // Corrupt weights.
        m.save(d.path()).unwrap();
        std::fs::write(d.path().join(WEIGHTS_FILE), b"garbage").unwrap();
        assert_eq!(Model::load(d.path()).err().unwrap().kind(), "model_corrupt");
        // Missing.
        std::fs::remove_file(d.path().join(WEIGHTS_FILE)).unwrap();
        assert_eq!(Model::load(d.path()).err().unwrap().kind(), "model_missing");
    }
}
