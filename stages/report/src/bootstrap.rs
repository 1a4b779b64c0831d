//! Bootstrap statistics over tasks: a 95% percentile interval of a rate (tasks resampled
//! with replacement), and the paired comparison of two policies on the same tasks (the
//! difference of their rates, its interval, and the one-sided p-value that the second is
//! no better). Seeded, so a report is the same every time it is written.

use std::collections::BTreeMap;

use swegym_schema::TaskOutcome;

/// Resamples per statistic.
pub const RESAMPLES: usize = 10_000;
const SEED: u64 = 0x5eed_b007;

/// A rate with its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Policy B against policy A on the tasks both were evaluated on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    pub tasks: usize,
    /// mean(B) − mean(A), and its 95% interval.
    pub diff: Interval,
    /// The share of resamples in which B's rate is not above A's (one-sided; with no task
    /// that differs, 1).
    pub p: f64,
    /// Tasks B resolves and A does not, and the reverse (rates rounded at 0.5).
    pub b_only: usize,
    pub a_only: usize,
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn resampled_means(values: &[f64]) -> Vec<f64> {
    let mut rng = SplitMix(SEED);
    let n = values.len();
    let mut means: Vec<f64> = (0..RESAMPLES).map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    means
}

/// The mean of `values` (one per task) and its 95% percentile-bootstrap interval; `None`
/// for no tasks.
pub fn interval(values: &[f64]) -> Option<Interval> {
    if values.is_empty() {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let means = resampled_means(values);
    Some(Interval { mean, lo: percentile(&means, 0.025), hi: percentile(&means, 0.975) })
}

/// B against A on their common tasks, by `field`; `None` when they share no task.
pub fn paired(a: &BTreeMap<String, TaskOutcome>, b: &BTreeMap<String, TaskOutcome>, field: fn(&TaskOutcome) -> f64) -> Option<Paired> {
    let pairs: Vec<(f64, f64)> = a.iter().filter_map(|(id, x)| b.get(id).map(|y| (field(x), field(y)))).collect();
    if pairs.is_empty() {
        return None;
    }
    let diffs: Vec<f64> = pairs.iter().map(|(x, y)| y - x).collect();
    let diff = interval(&diffs)?;
    let p = if diffs.iter().all(|d| *d == 0.0) {
        1.0
    } else {
        let means = resampled_means(&diffs);
        means.iter().filter(|m| **m <= 0.0).count() as f64 / means.len() as f64
    };
    Some(Paired {
        tasks: pairs.len(),
        diff,
        p,
        b_only: pairs.iter().filter(|(x, y)| *y >= 0.5 && *x < 0.5).count(),
        a_only: pairs.iter().filter(|(x, y)| *x >= 0.5 && *y < 0.5).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(resolved: &[f64]) -> BTreeMap<String, TaskOutcome> {
        resolved.iter().enumerate().map(|(i, r)| (format!("t{i:03}"), TaskOutcome { resolved: *r, empty_patch: 1.0 - r })).collect()
    }

    #[test]
    fn interval_brackets_the_mean_and_narrows_with_more_tasks() {
        let few: Vec<f64> = (0..20).map(|i| f64::from(u8::from(i % 4 == 0))).collect();
        let many: Vec<f64> = (0..400).map(|i| f64::from(u8::from(i % 4 == 0))).collect();
        let (a, b) = (interval(&few).unwrap(), interval(&many).unwrap());
        assert_eq!((a.mean, b.mean), (0.25, 0.25));
        assert!(a.lo < 0.25 && 0.25 < a.hi && b.lo < 0.25 && 0.25 < b.hi, "{a:?} {b:?}");
        assert!(b.hi - b.lo < (a.hi - a.lo) / 2.0, "{a:?} {b:?}");
        assert_eq!(interval(&[]), None);
        assert_eq!(interval(&[0.0; 5]).unwrap(), Interval { mean: 0.0, lo: 0.0, hi: 0.0 });
        assert_eq!(interval(&few), interval(&few), "seeded");
    }

    #[test]
    fn paired_comparison_on_common_tasks() {
        // B solves 12 tasks A does not, A solves 1 that B does not, of 60.
        let a: Vec<f64> = (0..60).map(|i| f64::from(u8::from(i == 0 || (10..15).contains(&i)))).collect();
        let b: Vec<f64> = (0..60).map(|i| f64::from(u8::from((10..27).contains(&i)))).collect();
        let p = paired(&outcomes(&a), &outcomes(&b), |t| t.resolved).unwrap();
        assert_eq!((p.tasks, p.b_only, p.a_only), (60, 12, 1));
        assert!((p.diff.mean - 11.0 / 60.0).abs() < 1e-12 && p.diff.lo > 0.0, "{p:?}");
        assert!(p.p < 0.01, "{p:?}");
        // No difference: p = 1; B worse: p near 1.
        assert_eq!(paired(&outcomes(&a), &outcomes(&a), |t| t.resolved).unwrap().p, 1.0);
        assert!(paired(&outcomes(&b), &outcomes(&a), |t| t.resolved).unwrap().p > 0.99);
        // Only common tasks count.
        let mut short = outcomes(&b);
        short.retain(|id, _| id.as_str() < "t030");
        assert_eq!(paired(&outcomes(&a), &short, |t| t.resolved).unwrap().tasks, 30);
        assert!(paired(&BTreeMap::new(), &short, |t| t.resolved).is_none());
    }
}
