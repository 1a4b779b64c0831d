//! Gold patches: the unified diff that turns a file's mutant back into the original,
//! in the `diff --git` form `git apply` and SWE-bench tooling read.

use similar::TextDiff;

/// The diff of one file from `old` to `new` (`a/` and `b/` both `path`), 3 lines of context.
/// Empty when the texts are equal.
pub fn file_diff(path: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let diff = TextDiff::from_lines(old, new);
    let body = diff.unified_diff().context_radius(3).header(&format!("a/{path}"), &format!("b/{path}")).to_string();
    format!("diff --git a/{path} b/{path}\n{body}")
}

/// The first 10 hex digits of a patch's sha256 (names a synthesized instance).
pub fn patch_digest(patch: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(patch.as_bytes()).iter().take(5).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_line_change_is_a_minimal_hunk() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        let expect = "diff --git a/p/m.py b/p/m.py\n--- a/p/m.py\n+++ b/p/m.py\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n";
        assert_eq!(file_diff("p/m.py", old, new), expect);
        assert_eq!(file_diff("p/m.py", old, old), "");
    }
}
