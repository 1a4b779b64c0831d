//! The order in which candidate mutations are tried: deterministic for a seed, balanced
//! across kinds (round-robin over kinds, each kind's sites shuffled), and at most
//! `max_per_function` candidates per function so that one long function cannot fill a
//! dataset.

use std::collections::{BTreeMap, VecDeque};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{Mutation, MutationKind};

#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    pub seed: u64,
    /// Candidates tried per function (`file::qualname`), at most.
    pub max_per_function: usize,
}

/// Orders `mutations` (given in a deterministic order, e.g. files sorted, source order).
pub fn plan(mutations: Vec<Mutation>, opts: &PlanOptions) -> Vec<Mutation> {
    let mut by_kind: BTreeMap<MutationKind, Vec<Mutation>> = BTreeMap::new();
    for m in mutations {
        by_kind.entry(m.kind).or_default().push(m);
    }
    let mut queues: Vec<VecDeque<Mutation>> = by_kind
        .into_iter()
        .map(|(kind, mut sites)| {
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ (kind as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            sites.shuffle(&mut rng);
            VecDeque::from(sites)
        })
        .collect();
    let mut per_function: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    loop {
        let mut any = false;
        for q in queues.iter_mut() {
            // The next site of this kind whose function still has room.
            while let Some(m) = q.pop_front() {
                let n = per_function.entry(m.function_key()).or_default();
                if *n < opts.max_per_function {
                    *n += 1;
                    out.push(m);
                    any = true;
                    break;
                }
            }
        }
        if !any {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PythonFile;

    fn sample() -> Vec<Mutation> {
        let source = "def f(a, b):\n    if a < b and a > 0:\n        return a + 1\n    return b - 2\n\ndef g(x):\n    return x[1:3] == 4\n";
        PythonFile::parse("m.py", source.into()).unwrap().mutations(&MutationKind::ALL).unwrap()
    }

    #[test]
    fn deterministic_for_a_seed_balanced_and_capped() {
        let all = sample();
        let a = plan(all.clone(), &PlanOptions { seed: 1, max_per_function: 100 });
        let b = plan(all.clone(), &PlanOptions { seed: 1, max_per_function: 100 });
        let c = plan(all.clone(), &PlanOptions { seed: 2, max_per_function: 100 });
        assert_eq!(a, b);
        assert_ne!(a, c, "another seed, another order");
        assert_eq!(a.len(), all.len(), "no cap hit: every site planned once");
        // Round-robin: the first kinds are all distinct.
        let kinds: std::collections::BTreeSet<MutationKind> = a.iter().take(5).map(|m| m.kind).collect();
        assert_eq!(kinds.len(), 5);
        let capped = plan(all, &PlanOptions { seed: 1, max_per_function: 2 });
        assert_eq!(capped.len(), 4, "two functions, two each");
    }
}
