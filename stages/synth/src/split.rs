//! The train / held-out test split, decided per function so that no function has
//! instances in both splits: a function goes to `test` when a seeded hash of its key falls
//! below the test fraction.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// The split of the function `function_key` (`repo::file::qualname`).
pub fn split_of(function_key: &str, seed: u64, test_fraction: f64) -> Split {
    let digest = Sha256::digest(format!("{seed}\0{function_key}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    let unit = u64::from_be_bytes(bytes) as f64 / u64::MAX as f64;
    if unit < test_fraction {
        Split::Test
    } else {
        Split::Train
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stable_and_near_the_fraction() {
        let keys: Vec<String> = (0..2000).map(|i| format!("o/r::m.py::f{i}")).collect();
        let test = keys.iter().filter(|k| split_of(k, 7, 0.2) == Split::Test).count();
        assert!((300..500).contains(&test), "{test} of 2000 in test");
        assert!(keys.iter().all(|k| split_of(k, 7, 0.2) == split_of(k, 7, 0.2)));
        assert!(keys.iter().any(|k| split_of(k, 7, 0.2) != split_of(k, 8, 0.2)), "the seed matters");
    }
}
