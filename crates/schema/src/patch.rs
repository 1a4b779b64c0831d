//! Model patches as text: clean-up, a small unified-diff reader, test-file detection,
//! removal of test-file diffs and the empty-patch rule.
//!
//! "Test file" is decided per path component, not by SWE-bench's substring rule
//! (`"test" in path`, collect/utils.py `extract_patches`), which would call every file of
//! `pytest-dev/pytest` (`src/_pytest/...`) a test file. A path is a test file when a
//! *directory* component is `e2e` or starts with `test` (`test`, `tests`, `testing`,
//! `test-data`, `testdata`), or when the file name is `conftest.py`, `tests.py`,
//! `test_*.py` or `*_test.py`. Every file a gold patch of SWE-bench / SWE-Gym touches is
//! a non-test file under this rule as well (the substring rule is stricter).

/// One file's section of a unified diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    /// Path before the change (`None` for a new file).
    pub old_path: Option<String>,
    /// Path after the change (`None` for a deleted file).
    pub new_path: Option<String>,
    /// Lines added or removed in hunks.
    pub changed_lines: usize,
    pub is_new: bool,
    pub is_deleted: bool,
    pub is_rename_or_copy: bool,
    pub is_binary: bool,
    /// The section's text, header included, each line ending in `\n`.
    pub text: String,
}

impl FileDiff {
    /// The path the section is about (the new one, else the old one).
    pub fn path(&self) -> &str {
        self.new_path.as_deref().or(self.old_path.as_deref()).unwrap_or("")
    }

    /// Both paths, without duplicates.
    pub fn paths(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for p in [self.old_path.as_deref(), self.new_path.as_deref()].into_iter().flatten() {
            if !v.contains(&p) {
                v.push(p);
            }
        }
        v
    }

    /// True when applying the section changes the tree's contents (a mode-only change does not).
    pub fn changes_content(&self) -> bool {
        self.changed_lines > 0 || self.is_new || self.is_deleted || self.is_rename_or_copy || self.is_binary
    }
}

/// Cleans a model patch the way SWE-bench / OpenHands do before applying it:
/// CRLF → LF, markdown code fences removed (the fenced blocks that hold a diff are kept,
/// in order), text before the first diff header dropped, one final newline.
/// Returns an empty string when there is no diff in the text.
pub fn clean_patch(raw: &str) -> String {
    let text = raw.replace("\r\n", "\n").replace('\r', "\n");
    let text = strip_fences(&text);
    let lines: Vec<&str> = text.split('\n').collect();
    let Some(start) = first_header_line(&lines) else {
        return String::new();
    };
    let mut out = lines[start..].join("\n");
    let trimmed_len = out.trim_end_matches('\n').len();
    out.truncate(trimmed_len);
    if out.trim().is_empty() {
        return String::new();
    }
    out.push('\n');
    out
}

/// Index of the first `diff --git` line, else of the first `--- ` line followed by `+++ `.
fn first_header_line(lines: &[&str]) -> Option<usize> {
    if let Some(i) = lines.iter().position(|l| l.starts_with("diff --git ")) {
        return Some(i);
    }
    lines
        .windows(2)
        .position(|w| w[0].starts_with("--- ") && w[1].starts_with("+++ "))
}

fn is_fence(line: &str) -> bool {
    let t = line.trim_end();
    t.starts_with("```") && t[3..].chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Keeps only the content of fenced blocks that contain a diff, when any line is a fence.
/// No diff line starts with a backtick, so a fence can never be part of the patch.
fn strip_fences(text: &str) -> String {
    if !text.lines().any(is_fence) {
        return text.to_string();
    }
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.split('\n') {
        if is_fence(line) {
            match current.take() {
                Some(block) => blocks.push(block.join("\n")),
                None => current = Some(Vec::new()),
            }
        } else if let Some(block) = current.as_mut() {
            block.push(line);
        }
    }
    if let Some(block) = current {
        // An unclosed fence: the rest of the text is the block.
        blocks.push(block.join("\n"));
    }
    let with_diff: Vec<String> = blocks
        .into_iter()
        .filter(|b| first_header_line(&b.split('\n').collect::<Vec<_>>()).is_some())
        .map(|b| b.trim_end_matches('\n').to_string() + "\n")
        .collect();
    if with_diff.is_empty() {
        return text.to_string();
    }
    with_diff.concat()
}

/// Splits a unified diff (git or plain) into per-file sections. Hunk line counts from the
/// `@@ -a,b +c,d @@` headers decide where a hunk ends, so a removed line that starts with
/// `--` is not taken for a file header. Text outside any section is dropped.
pub fn split_file_diffs(patch: &str) -> Vec<FileDiff> {
    let lines: Vec<&str> = patch.split_inclusive('\n').collect();
    let mut files: Vec<FileDiff> = Vec::new();
    let mut cur: Option<FileDiff> = None;
    // Remaining old/new lines of the hunk being read.
    let mut hunk: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        let line = raw.trim_end_matches('\n');
        if let Some((old_left, new_left)) = hunk {
            let (o, n) = match line.as_bytes().first() {
                Some(b'+') => (0, 1),
                Some(b'-') => (1, 0),
                Some(b' ') | None => (1, 1),
                Some(b'\\') => (0, 0),
                _ => {
                    // Malformed hunk: end it here and read the line as a header.
                    hunk = None;
                    continue;
                }
            };
            if let Some(f) = cur.as_mut() {
                f.text.push_str(raw);
                if o != n {
                    f.changed_lines += 1;
                }
            }
            let (ol, nl) = (old_left.saturating_sub(o), new_left.saturating_sub(n));
            hunk = if ol == 0 && nl == 0 {
                // A trailing "\ No newline at end of file" still belongs to this hunk.
                if lines.get(i + 1).is_some_and(|l| l.starts_with('\\')) {
                    if let Some(f) = cur.as_mut() {
                        f.text.push_str(lines[i + 1]);
                    }
                    i += 1;
                }
                None
            } else {
                Some((ol, nl))
            };
            i += 1;
            continue;
        }
        let plain_header =
            line.starts_with("--- ") && lines.get(i + 1).is_some_and(|l| l.starts_with("+++ "));
        let starts_section = line.starts_with("diff --git ")
            || (plain_header && cur.as_ref().is_none_or(|f| f.text.contains("\n--- ") || f.text.starts_with("--- ")));
        if starts_section {
            if let Some(f) = cur.take() {
                files.push(f);
            }
            let mut f = FileDiff {
                old_path: None,
                new_path: None,
                changed_lines: 0,
                is_new: false,
                is_deleted: false,
                is_rename_or_copy: false,
                is_binary: false,
                text: String::new(),
            };
            if let Some(rest) = line.strip_prefix("diff --git ") {
                let (a, b) = split_git_header(rest);
                f.old_path = a;
                f.new_path = b;
            }
            cur = Some(f);
        }
        let Some(f) = cur.as_mut() else {
            i += 1;
            continue;
        };
        f.text.push_str(raw);
        if !raw.ends_with('\n') {
            f.text.push('\n');
        }
        if let Some(p) = line.strip_prefix("--- ") {
            f.old_path = diff_side_path(p, "a/");
            if f.old_path.is_none() {
                f.is_new = true;
            }
        } else if let Some(p) = line.strip_prefix("+++ ") {
            f.new_path = diff_side_path(p, "b/");
            if f.new_path.is_none() {
                f.is_deleted = true;
            }
        } else if line.starts_with("new file mode") {
            f.is_new = true;
            f.old_path = None;
        } else if line.starts_with("deleted file mode") {
            f.is_deleted = true;
            f.new_path = None;
        } else if let Some(p) = line.strip_prefix("rename from ").or_else(|| line.strip_prefix("copy from ")) {
            f.is_rename_or_copy = true;
            f.old_path = Some(unquote(p));
        } else if let Some(p) = line.strip_prefix("rename to ").or_else(|| line.strip_prefix("copy to ")) {
            f.is_rename_or_copy = true;
            f.new_path = Some(unquote(p));
        } else if line.starts_with("GIT binary patch") || (line.starts_with("Binary files ") && line.ends_with(" differ")) {
            f.is_binary = true;
        } else if let Some(h) = parse_hunk_header(line) {
            hunk = Some(h);
        }
        i += 1;
    }
    if let Some(f) = cur.take() {
        files.push(f);
    }
    files
}

/// `a/x b/y` → (x, y). Paths with spaces are split at the last ` b/`.
fn split_git_header(rest: &str) -> (Option<String>, Option<String>) {
    if rest.starts_with('"') {
        let mut parts = rest.splitn(2, "\" ");
        let a = parts.next().map(|s| unquote(&format!("{s}\"")));
        let b = parts.next().map(unquote);
        return (a.map(|s| strip_side(&s, "a/")), b.map(|s| strip_side(&s, "b/")));
    }
    match rest.rfind(" b/") {
        Some(idx) => (Some(strip_side(&rest[..idx], "a/")), Some(strip_side(&rest[idx + 1..], "b/"))),
        None => (None, None),
    }
}

fn strip_side(p: &str, side: &str) -> String {
    p.strip_prefix(side).unwrap_or(p).to_string()
}

/// Path on a `---`/`+++` line; `None` for `/dev/null`. A tab and what follows (a
/// timestamp in non-git diffs) is dropped.
fn diff_side_path(p: &str, side: &str) -> Option<String> {
    let p = p.split('\t').next().unwrap_or(p).trim_end();
    if p == "/dev/null" {
        return None;
    }
    let p = unquote(p);
    Some(strip_side(&p, side))
}

/// Removes the quotes git puts around paths with unusual characters (escapes kept as is
/// except `\"` and `\\`).
fn unquote(p: &str) -> String {
    let p = p.trim();
    match p.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => p.to_string(),
    }
}

/// `@@ -l[,s] +l[,s] @@` → (old count, new count).
fn parse_hunk_header(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix("@@ -")?;
    let end = rest.find(" @@")?;
    let mut sides = rest[..end].split(" +");
    let old = sides.next()?;
    let new = sides.next()?;
    let count = |s: &str| -> Option<usize> {
        match s.split_once(',') {
            Some((_, n)) => n.parse().ok(),
            None => s.parse::<usize>().ok().map(|_| 1),
        }
    };
    Some((count(old)?, count(new)?))
}

/// True when `path` is a test file (see the module docs for the rule).
pub fn is_test_path(path: &str) -> bool {
    let path = path.trim_start_matches("./");
    let mut components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let Some(name) = components.pop() else {
        return false;
    };
    if components.iter().any(|dir| {
        let d = dir.to_ascii_lowercase();
        d == "e2e" || d.starts_with("test")
    }) {
        return true;
    }
    name == "conftest.py"
        || name == "tests.py"
        || (name.starts_with("test_") && name.ends_with(".py"))
        || name.ends_with("_test.py")
}

/// True when a section touches a test file on either side (by [`is_test_path`] or named in
/// `extra_test_files`).
pub fn is_test_file_diff(f: &FileDiff, extra_test_files: &[String]) -> bool {
    f.paths().iter().any(|p| is_test_path(p) || extra_test_files.iter().any(|t| t == p))
}

/// The patch without the sections of test files (by [`is_test_path`] or named in
/// `extra_test_files`, e.g. the task's test-patch files). A rename touching a test file
/// on either side is removed. Text outside sections is dropped.
pub fn remove_test_files(patch: &str, extra_test_files: &[String]) -> String {
    split_file_diffs(patch)
        .into_iter()
        .filter(|f| !is_test_file_diff(f, extra_test_files))
        .map(|f| f.text)
        .collect()
}

/// Empty patch (SWE-Gym's metric): the diff, test files excluded, changes nothing — no
/// added or removed line, no new, deleted, renamed or binary file (a mode-only change
/// counts as nothing).
pub fn is_empty_patch(patch: &str, extra_test_files: &[String]) -> bool {
    !split_file_diffs(&clean_patch(patch))
        .iter()
        .any(|f| !is_test_file_diff(f, extra_test_files) && f.changes_content())
}

/// Files a diff modifies that exist before it (not new files), and files it creates.
/// SWE-bench resets the first with `git checkout` and removes the second before it applies
/// the test patch (`get_modified_files` / `get_new_files`).
pub fn modified_and_new_files(patch: &str) -> (Vec<String>, Vec<String>) {
    let mut modified = Vec::new();
    let mut new = Vec::new();
    for f in split_file_diffs(patch) {
        if f.is_new {
            if let Some(p) = f.new_path {
                push_unique(&mut new, p);
            }
        } else if let Some(p) = f.old_path.clone() {
            push_unique(&mut modified, p);
            if f.is_rename_or_copy {
                if let Some(n) = f.new_path {
                    push_unique(&mut new, n);
                }
            }
        }
    }
    (modified, new)
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_FILES: &str = "diff --git a/src/m.py b/src/m.py\nindex 1..2 100644\n--- a/src/m.py\n+++ b/src/m.py\n@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n+b = 3\ndiff --git a/tests/test_m.py b/tests/test_m.py\n--- a/tests/test_m.py\n+++ b/tests/test_m.py\n@@ -1 +1 @@\n-x\n+y\n";

    fn check_clean(input: &str, expect: &str) {
        assert_eq!(clean_patch(input), expect, "input: {input:?}");
    }

    #[test]
    fn clean_patch_cases() {
        let diff = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n";
        // Already clean.
        check_clean(diff, diff);
        // CRLF, missing final newline.
        check_clean(diff.replace('\n', "\r\n").trim_end(), diff);
        // Prose before the diff.
        check_clean(&format!("Here is the fix:\n\n{diff}"), diff);
        // Markdown fences with prose after.
        check_clean(&format!("Sure!\n```diff\n{diff}```\nThis fixes it.\n"), diff);
        // Two fenced blocks, one per file; a python block without a diff is ignored.
        let diff2 = "diff --git a/y b/y\n--- a/y\n+++ b/y\n@@ -1 +1 @@\n-c\n+d\n";
        check_clean(
            &format!("```python\nprint(1)\n```\n```patch\n{diff}```\nand\n```\n{diff2}```\n"),
            &format!("{diff}{diff2}"),
        );
        // Plain unified diff without a git header.
        check_clean("junk\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b", "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n");
        // Nothing that looks like a diff.
        check_clean("I could not fix it.", "");
        check_clean("", "");
        // Trailing blank lines collapse to one newline.
        check_clean(&format!("{diff}\n\n\n"), diff);
    }

    #[test]
    fn split_reads_paths_and_flags() {
        let files = split_file_diffs(TWO_FILES);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path(), "src/m.py");
        assert_eq!(files[0].changed_lines, 2);
        assert_eq!(files[1].path(), "tests/test_m.py");
        assert_eq!(files.iter().map(|f| f.text.as_str()).collect::<String>(), TWO_FILES);

        // A removed line starting with "--" and an added one with "++" stay inside the hunk.
        let tricky = "diff --git a/x.sql b/x.sql\n--- a/x.sql\n+++ b/x.sql\n@@ -1,2 +1,2 @@\n--- comment\n+++ other\n keep\n";
        let files = split_file_diffs(tricky);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].changed_lines, 2);

        let new_del = "diff --git a/n.py b/n.py\nnew file mode 100644\nindex 0000000..e69de29\ndiff --git a/old.py b/old.py\ndeleted file mode 100644\n--- a/old.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\ndiff --git a/r1.py b/r2.py\nsimilarity index 100%\nrename from r1.py\nrename to r2.py\ndiff --git a/m.sh b/m.sh\nold mode 100644\nnew mode 100755\n";
        let files = split_file_diffs(new_del);
        assert_eq!(files.len(), 4);
        assert!(files[0].is_new && files[0].old_path.is_none() && files[0].changes_content());
        assert!(files[1].is_deleted && files[1].new_path.is_none());
        assert_eq!((files[2].old_path.as_deref(), files[2].new_path.as_deref()), (Some("r1.py"), Some("r2.py")));
        assert!(!files[3].changes_content(), "mode-only change");
        let (modified, new) = modified_and_new_files(new_del);
        assert_eq!(modified, vec!["old.py", "r1.py", "m.sh"]);
        assert_eq!(new, vec!["n.py", "r2.py"]);
    }

    #[test]
    fn test_path_rule() {
        let cases = [
            ("tests/test_x.py", true),
            ("pkg/tests/helpers.py", true),
            ("testing/python/fixtures.py", true),
            ("test-data/unit/check-classes.test", true),
            ("mypy/test/testcheck.py", true),
            ("conftest.py", true),
            ("src/pkg/conftest.py", true),
            ("pkg/test_utils.py", true),
            ("pkg/utils_test.py", true),
            ("django/foo/tests.py", true),
            ("e2e/spec.js", true),
            ("src/_pytest/python.py", false),
            ("src/pytest/__init__.py", false),
            ("pandas/_testing/__init__.py", false),
            ("pkg/contest.py", false),
            ("pkg/testament.py", false),
            ("latest/notes.py", false),
            ("setup.py", false),
        ];
        for (path, expect) in cases {
            assert_eq!(is_test_path(path), expect, "{path}");
        }
    }

    #[test]
    fn empty_patch_cases() {
        let cases: [(&str, &[&str], bool); 7] = [
            ("", &[], true),
            ("no diff here", &[], true),
            (TWO_FILES, &[], false),
            // Only test files changed.
            ("diff --git a/tests/test_m.py b/tests/test_m.py\n--- a/tests/test_m.py\n+++ b/tests/test_m.py\n@@ -1 +1 @@\n-x\n+y\n", &[], true),
            // A file named by the task's test patch counts as a test file.
            ("diff --git a/docs/x.rst b/docs/x.rst\n--- a/docs/x.rst\n+++ b/docs/x.rst\n@@ -1 +1 @@\n-x\n+y\n", &["docs/x.rst"], true),
            // Mode-only change.
            ("diff --git a/m.sh b/m.sh\nold mode 100644\nnew mode 100755\n", &[], true),
            // New empty file outside tests is a change.
            ("diff --git a/n.py b/n.py\nnew file mode 100644\nindex 0000000..e69de29\n", &[], false),
        ];
        for (patch, extra, expect) in cases {
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            assert_eq!(is_empty_patch(patch, &extra), expect, "{patch:?}");
        }
    }

    #[test]
    fn remove_test_files_keeps_source_sections() {
        let kept = remove_test_files(TWO_FILES, &[]);
        assert!(kept.starts_with("diff --git a/src/m.py b/src/m.py\n"));
        assert!(!kept.contains("tests/test_m.py"));
        assert_eq!(split_file_diffs(&kept).len(), 1);
        assert_eq!(remove_test_files(TWO_FILES, &["src/m.py".into()]), "");
    }
}
