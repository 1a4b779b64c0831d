//! Inference-time scaling metrics (paper App. B.1, notebook `calculate_pass_at_k_smooth`)
//! and the verifier's quality as a classifier.
//!
//! Per instance with M rollouts, the first one (the lowest `sample_idx`, sampled at t = 0 in
//! the paper) is always in the subset; for k > 1 the other k − 1 are drawn without
//! replacement from the remaining M − 1, `subsets` times (100), and the instance's value is
//! the mean over the draws of:
//! - **Pass@k**: 1 if any rollout of the subset is resolved;
//! - **Best@k**: 1 if the subset's highest-p_yes rollout is resolved (ties: the first in
//!   subset order, i.e. rollout 0 first, then the draw's order);
//! - **Random@k**: the share of resolved rollouts in the subset (the expected value of
//!   picking one uniformly — the baseline a verifier must beat).
//!
//! A k is reported over the instances with at least k rollouts. Error bars are the paper's
//! bootstrap (`summarize_outputs.py`): the population standard deviation of the mean over
//! `bootstrap` (1,000) samples of half the instances drawn without replacement.
//! AUC is the Mann–Whitney statistic (the probability that a resolved rollout outscores an
//! unresolved one, ties counting one half); accuracy reads p_yes > 0.5 as YES.

use std::collections::BTreeMap;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One graded, scored rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub sample_idx: u32,
    pub resolved: bool,
    pub p_yes: f64,
}

/// The settings of [`scaling`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingOptions {
    pub ks: Vec<usize>,
    /// Random subsets per instance and k (the paper: 100).
    pub subsets: usize,
    /// Bootstrap samples of half the instances (the paper: 1,000).
    pub bootstrap: usize,
    pub seed: u64,
}

impl Default for ScalingOptions {
    fn default() -> Self {
        ScalingOptions { ks: vec![1, 2, 4, 8, 16], subsets: 100, bootstrap: 1000, seed: 0 }
    }
}

/// A rate in percent with its bootstrap standard deviation (percentage points; None with
/// fewer than 2 instances).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub mean: f64,
    pub std: Option<f64>,
}

/// Pass@k, Best@k and Random@k at one k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KPoint {
    pub k: usize,
    /// Instances with at least k rollouts (the ones averaged).
    pub instances: usize,
    pub pass: Rate,
    pub best: Rate,
    pub random: Rate,
}

/// The verifier as a classifier of its rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classifier {
    pub rollouts: usize,
    pub positives: usize,
    pub negatives: usize,
    /// None without both labels.
    pub auc: Option<f64>,
    /// Share of rollouts where p_yes > 0.5 matches `resolved`.
    pub accuracy: f64,
    pub mean_p_yes_resolved: Option<f64>,
    pub mean_p_yes_unresolved: Option<f64>,
}

/// What `swegym verifier eval` writes: the report plus where its scores came from.
#[derive(Debug, Serialize, Deserialize)]
pub struct EvalFile {
    pub scores: Vec<std::path::PathBuf>,
    /// Tasks whose first rollout was sampled at a temperature above 0 (the paper keeps a greedy rollout 0).
    pub first_rollout_not_greedy: usize,
    pub report: ScalingReport,
}

/// Everything `swegym verifier eval` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingReport {
    pub instances: usize,
    pub rollouts: usize,
    /// Rollouts per instance: the smallest and largest M.
    pub min_rollouts: usize,
    pub max_rollouts: usize,
    pub points: Vec<KPoint>,
    /// The asked-for ks no instance has enough rollouts for.
    pub skipped_ks: Vec<usize>,
    pub classifier: Classifier,
    pub options: ScalingOptions,
}

/// Per-instance (Pass, Best, Random) at k: means over `subsets` draws.
pub fn instance_at_k(rollouts: &[Scored], k: usize, subsets: usize, rng: &mut ChaCha8Rng) -> (f64, f64, f64) {
    assert!(k >= 1 && k <= rollouts.len(), "k = {k} with {} rollouts", rollouts.len());
    let mut sorted: Vec<&Scored> = rollouts.iter().collect();
    sorted.sort_by_key(|r| r.sample_idx);
    let (first, rest) = (sorted[0], &sorted[1..]);
    // k = 1 and k = M have one subset; drawing it again changes nothing
    let draws = if k == 1 || k == rollouts.len() { 1 } else { subsets.max(1) };
    let (mut pass, mut best, mut random) = (0.0, 0.0, 0.0);
    for _ in 0..draws {
        let mut subset = vec![first];
        if k == rollouts.len() {
            subset.extend(rest.iter().copied());
        } else if k > 1 {
            subset.extend(sample(rng, rest.len(), k - 1).into_iter().map(|i| rest[i]));
        }
        let resolved = subset.iter().filter(|r| r.resolved).count();
        pass += f64::from(u8::from(resolved > 0));
        random += resolved as f64 / k as f64;
        best += f64::from(u8::from(top_of(&subset).resolved));
    }
    let n = draws as f64;
    (pass / n, best / n, random / n)
}

/// The highest-p_yes rollout of `subset` (ties: the first in subset order).
fn top_of<'a>(subset: &[&'a Scored]) -> &'a Scored {
    subset.iter().copied().fold(subset[0], |top, r| if r.p_yes > top.p_yes { r } else { top })
}

/// The verifier's pick among all of a task's rollouts (Best@k at k = M): the highest p_yes,
/// ties going to the lowest `sample_idx` — the rollout Best@k counts. None for no rollouts.
pub fn pick(rollouts: &[Scored]) -> Option<&Scored> {
    let mut sorted: Vec<&Scored> = rollouts.iter().collect();
    sorted.sort_by_key(|r| r.sample_idx);
    (!sorted.is_empty()).then(|| top_of(&sorted))
}

/// The population standard deviation of the mean of `bootstrap` samples of half of
/// `values` drawn without replacement (`summarize_outputs.py`); None for fewer than 2 values.
pub fn bootstrap_std(values: &[f64], bootstrap: usize, rng: &mut ChaCha8Rng) -> Option<f64> {
    let half = values.len() / 2;
    if half == 0 || bootstrap == 0 {
        return None;
    }
    let means: Vec<f64> = (0..bootstrap).map(|_| sample(rng, values.len(), half).into_iter().map(|i| values[i]).sum::<f64>() / half as f64).collect();
    let mean = means.iter().sum::<f64>() / means.len() as f64;
    Some((means.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / means.len() as f64).sqrt())
}

/// AUC (Mann–Whitney, average ranks for ties); None without both labels.
pub fn auc(scored: &[(f64, bool)]) -> Option<f64> {
    let pos = scored.iter().filter(|s| s.1).count();
    let neg = scored.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| scored[a].0.total_cmp(&scored[b].0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scored[order[j + 1]].0 == scored[order[i]].0 {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg_rank * order[i..=j].iter().filter(|&&o| scored[o].1).count() as f64;
        i = j + 1;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// The verifier as a classifier over every rollout.
pub fn classifier(scored: &[(f64, bool)]) -> Classifier {
    let positives = scored.iter().filter(|s| s.1).count();
    let mean = |label: bool| {
        let v: Vec<f64> = scored.iter().filter(|s| s.1 == label).map(|s| s.0).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let correct = scored.iter().filter(|(p, resolved)| (*p > 0.5) == *resolved).count();
    Classifier {
        rollouts: scored.len(),
        positives,
        negatives: scored.len() - positives,
        auc: auc(scored),
        accuracy: if scored.is_empty() { 0.0 } else { correct as f64 / scored.len() as f64 },
        mean_p_yes_resolved: mean(true),
        mean_p_yes_unresolved: mean(false),
    }
}

/// Pass@k, Best@k and Random@k for every k, with bootstrap error bars, and the classifier
/// numbers, over `instances` (instance id → its scored rollouts).
pub fn scaling(instances: &BTreeMap<String, Vec<Scored>>, options: &ScalingOptions) -> ScalingReport {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let sizes: Vec<usize> = instances.values().map(Vec::len).filter(|&n| n > 0).collect();
    let mut points = Vec::new();
    let mut skipped_ks = Vec::new();
    for &k in &options.ks {
        let with_k: Vec<&Vec<Scored>> = instances.values().filter(|r| k >= 1 && r.len() >= k).collect();
        if with_k.is_empty() {
            skipped_ks.push(k);
            continue;
        }
        let per: Vec<(f64, f64, f64)> = with_k.iter().map(|r| instance_at_k(r, k, options.subsets, &mut rng)).collect();
        // one set of bootstrap draws for the three rates (a paired bootstrap: equal values, equal bars)
        let bootstrap_seed = rng.random::<u64>();
        let rate = |pick: fn(&(f64, f64, f64)) -> f64| {
            let values: Vec<f64> = per.iter().map(pick).collect();
            let mean = 100.0 * values.iter().sum::<f64>() / values.len() as f64;
            let mut draws = ChaCha8Rng::seed_from_u64(bootstrap_seed);
            Rate { mean, std: bootstrap_std(&values, options.bootstrap, &mut draws).map(|s| 100.0 * s) }
        };
        let (pass, best, random) = (rate(|v| v.0), rate(|v| v.1), rate(|v| v.2));
        points.push(KPoint { k, instances: with_k.len(), pass, best, random });
    }
    let all: Vec<(f64, bool)> = instances.values().flatten().map(|s| (s.p_yes, s.resolved)).collect();
    ScalingReport {
        instances: sizes.len(),
        rollouts: all.len(),
        min_rollouts: sizes.iter().copied().min().unwrap_or(0),
        max_rollouts: sizes.iter().copied().max().unwrap_or(0),
        points,
        skipped_ks,
        classifier: classifier(&all),
        options: options.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sample_idx: u32, resolved: bool, p_yes: f64) -> Scored {
        Scored { sample_idx, resolved, p_yes }
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn k1_is_rollout_zero_and_km_is_the_whole_set() {
        // rollout 0 fails; rollout 2 is resolved and the verifier prefers rollout 1 (a failure)
        let r = [s(2, true, 0.6), s(0, false, 0.1), s(1, false, 0.9), s(3, false, 0.2)];
        assert_eq!(instance_at_k(&r, 1, 100, &mut rng()), (0.0, 0.0, 0.0));
        assert_eq!(instance_at_k(&r, 4, 100, &mut rng()), (1.0, 0.0, 0.25));
        // a verifier that ranks the resolved one first picks it whenever it is drawn
        let good = [s(0, false, 0.1), s(1, false, 0.2), s(2, true, 0.9)];
        assert_eq!(instance_at_k(&good, 3, 100, &mut rng()), (1.0, 1.0, 1.0 / 3.0));
    }

    #[test]
    fn k2_draws_the_second_rollout_uniformly() {
        // M = 3, rollout 0 fails, one of the two others is resolved and preferred: Pass@2 =
        // Best@2 = P(drawing it) = 1/2 in expectation; Random@2 = 1/2 × 1/2 = 1/4.
        let r = [s(0, false, 0.5), s(1, true, 0.9), s(2, false, 0.1)];
        let (pass, best, random) = instance_at_k(&r, 2, 20_000, &mut rng());
        assert!((pass - 0.5).abs() < 0.02, "{pass}");
        assert_eq!(pass, best, "the resolved one is the verifier's pick whenever it is drawn");
        assert!((random - 0.25).abs() < 0.01, "{random}");
    }

    #[test]
    fn ties_keep_the_first_rollout() {
        let r = [s(0, false, 0.5), s(1, true, 0.5)];
        assert_eq!(instance_at_k(&r, 2, 10, &mut rng()), (1.0, 0.0, 0.5));
        assert_eq!(pick(&r).map(|p| p.sample_idx), Some(0));
        // the pick is the rollout Best@M counts, whatever the input order
        let r = [s(2, true, 0.7), s(1, false, 0.7), s(0, false, 0.2)];
        assert_eq!(pick(&r).map(|p| p.sample_idx), Some(1));
        assert_eq!(instance_at_k(&r, 3, 10, &mut rng()).1, 0.0);
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn auc_by_hand() {
        // positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) = 3/4
        assert_eq!(auc(&[(0.9, true), (0.5, false), (0.4, true), (0.1, false)]), Some(0.75));
        // a tie counts one half: (0.5 = 0.5) → 1/2
        assert_eq!(auc(&[(0.5, true), (0.5, false)]), Some(0.5));
        // positives 0.7, 0.3; negatives 0.3, 0.2: (0.7 beats both) 2 + (0.3 ties 0.3) 0.5 + (0.3 > 0.2) 1 = 3.5/4
        assert_eq!(auc(&[(0.7, true), (0.3, true), (0.3, false), (0.2, false)]), Some(0.875));
        assert_eq!(auc(&[(0.7, true)]), None);
        let c = classifier(&[(0.9, true), (0.5, false), (0.4, true), (0.1, false)]);
        // 0.9 → YES right, 0.5 → NO right (not > 0.5), 0.4 → NO wrong, 0.1 → NO right
        assert_eq!(c.accuracy, 0.75);
        assert_eq!((c.positives, c.negatives), (2, 2));
        assert!((c.mean_p_yes_resolved.unwrap() - 0.65).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_of_half_samples() {
        // two values: every half-sample is one of them → means {0, 1} equally often → std 1/2
        let std = bootstrap_std(&[0.0, 1.0], 4000, &mut rng()).unwrap();
        assert!((std - 0.5).abs() < 0.01, "{std}");
        // constant values have no spread (but for the rounding of a mean of means)
        assert!(bootstrap_std(&[0.3; 10], 100, &mut rng()).unwrap() < 1e-12);
        assert_eq!(bootstrap_std(&[1.0], 100, &mut rng()), None);
        // four values 0,0,1,1: half-samples of 2 without replacement have means 0 (1/6), 1/2 (4/6), 1 (1/6):
        // variance = 2 × 1/6 × 1/4 = 1/12
        let std = bootstrap_std(&[0.0, 0.0, 1.0, 1.0], 20_000, &mut rng()).unwrap();
        assert!((std - (1.0f64 / 12.0).sqrt()).abs() < 0.01, "{std}");
    }

    #[test]
    fn scaling_over_instances() {
        let mut instances = BTreeMap::new();
        // a: rollout 0 resolved and preferred; b: nothing resolved; c: only rollout 1 resolved, verifier prefers it
        instances.insert("a".to_string(), vec![s(0, true, 0.9), s(1, false, 0.2)]);
        instances.insert("b".to_string(), vec![s(0, false, 0.3), s(1, false, 0.4)]);
        instances.insert("c".to_string(), vec![s(0, false, 0.1), s(1, true, 0.8)]);
        let options = ScalingOptions { ks: vec![1, 2, 4], subsets: 100, bootstrap: 200, seed: 3 };
        let report = scaling(&instances, &options);
        assert_eq!(report.skipped_ks, vec![4]);
        assert_eq!((report.instances, report.rollouts, report.min_rollouts, report.max_rollouts), (3, 6, 2, 2));
        let p1 = &report.points[0];
        // k = 1: a only → 1/3 for all three
        assert!((p1.pass.mean - 100.0 / 3.0).abs() < 1e-9 && (p1.best.mean - 100.0 / 3.0).abs() < 1e-9);
        let p2 = &report.points[1];
        // k = 2 = M: Pass a, c → 2/3; Best a, c → 2/3; Random (1/2 + 0 + 1/2)/3 = 1/3
        assert!((p2.pass.mean - 200.0 / 3.0).abs() < 1e-9);
        assert!((p2.best.mean - 200.0 / 3.0).abs() < 1e-9);
        assert!((p2.random.mean - 100.0 / 3.0).abs() < 1e-9);
        assert!(p2.pass.std.unwrap() > 0.0);
        // equal per-task values get equal error bars (the three rates share their bootstrap draws)
        assert_eq!(p2.pass.std, p2.best.std);
        assert_eq!((p1.pass.std, p1.best.std), (p1.random.std, p1.random.std));
        assert_eq!(report.classifier.auc, Some(1.0));
    }
}
