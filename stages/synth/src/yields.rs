//! Yield bookkeeping: candidates tried and kept per mutation kind, drops by reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DropReason, MutationKind};

/// Tried / kept of one kind, and why the others were dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KindYield {
    pub tried: u32,
    pub kept: u32,
    pub dropped: BTreeMap<DropReason, u32>,
}

impl KindYield {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &KindYield) {
        self.tried += other.tried;
        self.kept += other.kept;
        for (r, n) in &other.dropped {
            *self.dropped.entry(*r).or_default() += n;
        }
    }

    pub fn rate(&self) -> f64 {
        if self.tried == 0 {
            0.0
        } else {
            self.kept as f64 / self.tried as f64
        }
    }
}

/// Yield per kind over a whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Yields {
    pub by_kind: BTreeMap<MutationKind, KindYield>,
}

impl Yields {
    pub fn kept(&mut self, kind: MutationKind) {
        let y = self.by_kind.entry(kind).or_default();
        y.tried += 1;
        y.kept += 1;
    }

    pub fn dropped(&mut self, kind: MutationKind, reason: DropReason) {
        let y = self.by_kind.entry(kind).or_default();
        y.tried += 1;
        *y.dropped.entry(reason).or_default() += 1;
    }

    pub fn total(&self) -> KindYield {
        let mut t = KindYield::default();
        for y in self.by_kind.values() {
            t.add(y);
        }
        t
    }

    /// Adds `other`'s counts (e.g. one environment's) to these, kind by kind.
    pub fn add(&mut self, other: &Yields) {
        for (kind, y) in &other.by_kind {
            self.by_kind.entry(*kind).or_default().add(y);
        }
    }

    /// A markdown table: kind, tried, kept, yield, drops by reason.
    pub fn to_table(&self) -> String {
        let mut out = String::from("| mutation kind | tried | kept | yield | dropped (reason: count) |\n|---|---:|---:|---:|---|\n");
        let row = |name: &str, y: &KindYield| {
            let drops: Vec<String> = y.dropped.iter().map(|(r, n)| format!("{}: {n}", r.as_str())).collect();
            format!("| {name} | {} | {} | {:.0}% | {} |\n", y.tried, y.kept, 100.0 * y.rate(), drops.join(", "))
        };
        for (kind, y) in &self.by_kind {
            out.push_str(&row(kind.as_str(), y));
        }
        out.push_str(&row("**all**", &self.total()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_table() {
        let mut y = Yields::default();
        y.kept(MutationKind::WrongReturn);
        y.dropped(MutationKind::WrongReturn, DropReason::NoFailingTest);
        y.dropped(MutationKind::SwapArguments, DropReason::TestTimeout);
        assert_eq!(y.by_kind[&MutationKind::WrongReturn].rate(), 0.5);
        assert_eq!(y.total().tried, 3);
        let t = y.to_table();
        assert!(t.contains("| wrong_return | 2 | 1 | 50% | no_failing_test: 1 |"), "{t}");
        assert!(t.contains("| **all** | 3 | 1 | 33% |"), "{t}");
        let mut sum = y.clone();
        sum.add(&y);
        assert_eq!(sum.by_kind[&MutationKind::WrongReturn].dropped[&DropReason::NoFailingTest], 2);
        assert_eq!(sum.total().tried, 6);
    }
}
