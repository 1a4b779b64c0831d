//! `str_replace_editor` with OpenHands' semantics (openhands-aci `OHEditor`), run against a
//! live sandbox: files are read and written through `Sandbox::exec` (base64 out) and
//! `Sandbox::write_file` (a staging file under /tmp, then `cat >` into place, which keeps
//! the file's mode), so any path the sandbox can reach works the same on both backends.
//!
//! Outputs and error texts follow OpenHands: `view` shows `cat -n`-style numbered lines
//! (`{n:6}\t{line}`) or a directory listed 2 levels deep without hidden entries;
//! `str_replace` needs exactly one match (`No replacement was performed, old_str `…` did not
//! appear verbatim in …` / `… Multiple occurrences of old_str `…` in lines [..]. Please
//! ensure it is unique.`) and shows a snippet of ±4 lines; `insert` goes after
//! `insert_line` (0 = top); `undo_edit` pops a per-file history (`create` pushes its text,
//! as OpenHands does); failures come back as `ERROR:\n…` observations, never as `Err`.
//! `Err` is only the sandbox failing.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use swegym_sandbox::{ExecRequest, Sandbox, SandboxError};

use crate::action::{EditorArgs, EditorCommand};

/// Lines of context around an edit in the snippet shown after it.
const SNIPPET_CONTEXT_WINDOW: usize = 4;
/// Characters of file content shown before `<response clipped>`.
pub const MAX_RESPONSE_LEN_CHAR: usize = 16_000;
/// Files larger than this are refused.
const MAX_FILE_BYTES: u64 = 10 << 20;
/// Edits remembered per file for `undo_edit`.
const MAX_HISTORY_PER_FILE: usize = 10;

const TEXT_FILE_CONTENT_TRUNCATED_NOTICE: &str = "<response clipped><NOTE>Due to the max output limit, only part of this file has been shown to you. You should retry this tool after you have searched inside the file with `grep -n` in order to find the line numbers of what you are looking for.</NOTE>";
const DIRECTORY_CONTENT_TRUNCATED_NOTICE: &str = "<response clipped><NOTE>Due to the max output limit, only part of this directory has been shown to you. You should use `ls -la` instead to view large directories incrementally.</NOTE>";

/// What one editor call returned: the observation text and whether it is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditorOutput {
    pub text: String,
    pub is_error: bool,
}

impl EditorOutput {
    fn ok(text: String) -> EditorOutput {
        EditorOutput { text, is_error: false }
    }
    fn error(message: String) -> EditorOutput {
        EditorOutput { text: format!("ERROR:\n{message}"), is_error: true }
    }
}

/// A path as the sandbox sees it.
enum PathKind {
    Missing,
    Dir,
    /// A regular file: its bytes, or `None` when larger than [`MAX_FILE_BYTES`] (its size).
    File(Result<Vec<u8>, u64>),
    Other,
}

/// The editor's state for one episode: the undo history per file.
pub struct Editor {
    history: HashMap<String, Vec<String>>,
    timeout: Duration,
    /// Where relative paths are suggested from (OpenHands' `workspace_root`).
    workspace_root: String,
    staging_counter: u64,
}

impl Editor {
    pub fn new(workspace_root: &str, timeout: Duration) -> Editor {
        Editor { history: HashMap::new(), timeout, workspace_root: workspace_root.to_string(), staging_counter: 0 }
    }

    /// Runs one call.
    pub async fn run(&mut self, sandbox: &dyn Sandbox, args: &EditorArgs) -> Result<EditorOutput, SandboxError> {
        let path = args.path.as_str();
        let invalid = |parameter: &str, value: &str, hint: String| {
            Ok(EditorOutput::error(format!("Invalid `{parameter}` parameter: {value}. {hint}")))
        };
        if !path.starts_with('/') {
            let mut hint = "The path should be an absolute path, starting with `/`.".to_string();
            let suggested = format!("{}/{}", self.workspace_root.trim_end_matches('/'), path);
            if !matches!(self.stat(sandbox, &suggested, false).await?, PathKind::Missing) {
                hint.push_str(&format!(" Maybe you meant {suggested}?"));
            }
            return invalid("path", path, hint);
        }
        let kind = self.stat(sandbox, path, args.command != EditorCommand::Create).await?;
        match (&kind, args.command) {
            (PathKind::Missing, EditorCommand::Create) => {}
            (_, EditorCommand::Create) => {
                return invalid("path", path, format!("File already exists at: {path}. Cannot overwrite files using command `create`."))
            }
            (PathKind::Missing, _) => return invalid("path", path, format!("The path {path} does not exist. Please provide a valid path.")),
            (PathKind::Dir, EditorCommand::View) => {}
            (PathKind::Dir, _) => {
                return invalid("path", path, format!("The path {path} is a directory and only the `view` command can be used on directories."))
            }
            _ => {}
        }
        let content = match kind {
            PathKind::Dir => return self.view_dir(sandbox, path, args.view_range.as_deref()).await,
            PathKind::Missing => None,
            PathKind::Other => return Ok(EditorOutput::error(format!("Invalid file: {path}. It is not a regular file."))),
            PathKind::File(Err(size)) => {
                return Ok(EditorOutput::error(format!(
                    "File validation failed for {path}: File is too large ({:.1}MB). Maximum allowed size is {}MB.",
                    size as f64 / 1048576.0,
                    MAX_FILE_BYTES >> 20
                )))
            }
            PathKind::File(Ok(bytes)) => match String::from_utf8(bytes) {
                Ok(text) if !text.contains('\0') => Some(text),
                _ => {
                    return Ok(EditorOutput::error(format!(
                        "File validation failed for {path}: File appears to be binary and this file type cannot be read or edited by this tool."
                    )))
                }
            },
        };
        let missing = |p: &str| Ok(EditorOutput::error(format!("Parameter `{p}` is required for command: {}.", args.command.as_str())));
        match args.command {
            EditorCommand::View => Ok(view_file(path, &content.unwrap_or_default(), args.view_range.as_deref())),
            EditorCommand::Create => {
                let Some(text) = &args.file_text else { return missing("file_text") };
                if let Some(err) = self.write(sandbox, path, text).await? {
                    return Ok(err);
                }
                self.push_history(path, text.clone());
                Ok(EditorOutput::ok(format!("File created successfully at: {path}")))
            }
            EditorCommand::StrReplace => {
                let Some(old_str) = &args.old_str else { return missing("old_str") };
                let new_str = args.new_str.clone().unwrap_or_default();
                if &new_str == old_str {
                    return invalid("new_str", &new_str, "No replacement was performed. `new_str` and `old_str` must be different.".into());
                }
                self.str_replace(sandbox, path, &content.unwrap_or_default(), old_str, &new_str).await
            }
            EditorCommand::Insert => {
                let Some(line) = args.insert_line else { return missing("insert_line") };
                let Some(new_str) = &args.new_str else { return missing("new_str") };
                self.insert(sandbox, path, &content.unwrap_or_default(), line, new_str).await
            }
            EditorCommand::UndoEdit => {
                let Some(old_text) = self.history.get_mut(path).and_then(Vec::pop) else {
                    return Ok(EditorOutput::error(format!("No edit history found for {path}.")));
                };
                if let Some(err) = self.write(sandbox, path, &old_text).await? {
                    return Ok(err);
                }
                Ok(EditorOutput::ok(format!("Last edit to {path} undone successfully. {}", make_output(&old_text, path, 1))))
            }
        }
    }

    async fn str_replace(&mut self, sandbox: &dyn Sandbox, path: &str, content: &str, old_str: &str, new_str: &str) -> Result<EditorOutput, SandboxError> {
        let starts: Vec<usize> = if old_str.is_empty() { Vec::new() } else { content.match_indices(old_str).map(|(i, _)| i).collect() };
        match starts.len() {
            0 => return Ok(EditorOutput::error(format!("No replacement was performed, old_str `{old_str}` did not appear verbatim in {path}."))),
            1 => {}
            _ => {
                let mut lines: Vec<usize> = starts.iter().map(|&i| content[..i].matches('\n').count() + 1).collect();
                lines.dedup();
                let lines = lines.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
                return Ok(EditorOutput::error(format!(
                    "No replacement was performed. Multiple occurrences of old_str `{old_str}` in lines [{lines}]. Please ensure it is unique."
                )));
            }
        }
        let idx = starts[0];
        let new_content = format!("{}{}{}", &content[..idx], new_str, &content[idx + old_str.len()..]);
        if let Some(err) = self.write(sandbox, path, &new_content).await? {
            return Ok(err);
        }
        self.push_history(path, content.to_string());
        let replacement_line = content[..idx].matches('\n').count() + 1;
        let start_line = replacement_line.saturating_sub(SNIPPET_CONTEXT_WINDOW);
        let end_line = replacement_line + SNIPPET_CONTEXT_WINDOW + new_str.matches('\n').count();
        let snippet = line_range(&new_content, start_line + 1, end_line);
        Ok(EditorOutput::ok(format!(
            "The file {path} has been edited. {}Review the changes and make sure they are as expected. Edit the file again if necessary.",
            make_output(&snippet, &format!("a snippet of {path}"), start_line + 1)
        )))
    }

    async fn insert(&mut self, sandbox: &dyn Sandbox, path: &str, content: &str, insert_line: i64, new_str: &str) -> Result<EditorOutput, SandboxError> {
        let num_lines = count_lines(content);
        if insert_line < 0 || insert_line as usize > num_lines {
            return Ok(EditorOutput::error(format!(
                "Invalid `insert_line` parameter: {insert_line}. It should be within the range of allowed values: [0, {num_lines}]"
            )));
        }
        let insert_line = insert_line as usize;
        let lines: Vec<&str> = content.split_inclusive('\n').collect();
        let mut new_content = String::with_capacity(content.len() + new_str.len() + 1);
        for l in &lines[..insert_line] {
            new_content.push_str(l);
        }
        if insert_line > 0 && !new_content.ends_with('\n') {
            new_content.push('\n');
        }
        let new_lines: Vec<&str> = new_str.split('\n').collect();
        for l in &new_lines {
            new_content.push_str(l);
            new_content.push('\n');
        }
        for l in &lines[insert_line..] {
            new_content.push_str(l);
        }
        if let Some(err) = self.write(sandbox, path, &new_content).await? {
            return Ok(err);
        }
        self.push_history(path, content.to_string());
        let start_line = insert_line.saturating_sub(SNIPPET_CONTEXT_WINDOW);
        let end_line = (num_lines + new_lines.len()).min(insert_line + SNIPPET_CONTEXT_WINDOW + new_lines.len());
        let snippet = line_range(&new_content, start_line + 1, end_line);
        Ok(EditorOutput::ok(format!(
            "The file {path} has been edited. {}Review the changes and make sure they are as expected (correct indentation, no duplicate lines, etc). Edit the file again if necessary.",
            make_output(&snippet, "a snippet of the edited file", (insert_line + 1).saturating_sub(SNIPPET_CONTEXT_WINDOW).max(1))
        )))
    }

    async fn view_dir(&self, sandbox: &dyn Sandbox, path: &str, view_range: Option<&[i64]>) -> Result<EditorOutput, SandboxError> {
        if view_range.is_some() {
            return Ok(EditorOutput::error(format!(
                "Invalid `view_range` parameter: {view_range:?}. The `view_range` parameter is not allowed when `path` points to a directory."
            )));
        }
        let p = path.trim_end_matches('/');
        let p = if p.is_empty() { "/" } else { p };
        let q = quote(p);
        let script = format!(
            "hidden=$(find -L {q} -mindepth 1 -maxdepth 1 -name '.*' | wc -l)\n\
             echo \"$hidden\"\n\
             find -L {q} -maxdepth 2 -not \\( -path {hp1} -o -path {hp2} \\) | sort | while IFS= read -r f; do if [ -d \"$f\" ]; then printf '%s/\\n' \"$f\"; else printf '%s\\n' \"$f\"; fi; done",
            hp1 = quote(&format!("{p}/.*")),
            hp2 = quote(&format!("{p}/*/.*")),
        );
        let out = sandbox.exec(&ExecRequest { output_cap: 4 << 20, ..ExecRequest::new(script, self.timeout) }).await?;
        let (first, listing) = out.output.split_once('\n').unwrap_or((out.output.as_str(), ""));
        let hidden: usize = first.trim().parse().unwrap_or(0);
        let mut listing = listing.trim_end().to_string();
        if listing.chars().count() > MAX_RESPONSE_LEN_CHAR {
            listing = listing.chars().take(MAX_RESPONSE_LEN_CHAR).collect::<String>() + DIRECTORY_CONTENT_TRUNCATED_NOTICE;
        }
        let mut text = format!("Here's the files and directories up to 2 levels deep in {p}, excluding hidden items:\n{listing}");
        if hidden > 0 {
            text.push_str(&format!(
                "\n\n{hidden} hidden files/directories in this directory are excluded. You can use 'ls -la {p}' to see them."
            ));
        }
        Ok(EditorOutput::ok(text))
    }

    /// Kind of `path` and, for a regular file when `read`, its bytes.
    async fn stat(&self, sandbox: &dyn Sandbox, path: &str, read: bool) -> Result<PathKind, SandboxError> {
        let q = quote(path);
        let read_cmd = if read { format!("if [ \"$s\" -le {MAX_FILE_BYTES} ]; then base64 -w0 -- {q}; fi") } else { String::new() };
        let script = format!(
            "if [ -d {q} ]; then echo D; elif [ -f {q} ]; then s=$(stat -L -c %s -- {q}); echo \"F $s\"; {read_cmd}\n\
             elif [ -e {q} ]; then echo O; else echo N; fi"
        );
        let out = sandbox.exec(&ExecRequest { output_cap: (MAX_FILE_BYTES as usize) * 2, ..ExecRequest::new(script, self.timeout) }).await?;
        let (head, body) = out.output.split_once('\n').unwrap_or((out.output.as_str(), ""));
        Ok(match head.trim() {
            "D" => PathKind::Dir,
            "N" => PathKind::Missing,
            "O" => PathKind::Other,
            h if h.starts_with("F ") => {
                let size: u64 = h[2..].trim().parse().unwrap_or(0);
                if size > MAX_FILE_BYTES {
                    PathKind::File(Err(size))
                } else if !read {
                    PathKind::File(Ok(Vec::new()))
                } else {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(body.trim())
                        .map_err(|e| SandboxError::Other(format!("reading {path}: undecodable base64 ({e}); output: {}", out.output.chars().take(200).collect::<String>())))?;
                    PathKind::File(Ok(bytes))
                }
            }
            other => return Err(SandboxError::Other(format!("stat of {path} printed {other:?} (exit {:?})", out.exit_code))),
        })
    }

    /// Writes `text` to `path` (creating parent dirs); `Some(error observation)` when the
    /// sandbox refuses the write (a read-only path), `Err` when the sandbox itself fails.
    async fn write(&mut self, sandbox: &dyn Sandbox, path: &str, text: &str) -> Result<Option<EditorOutput>, SandboxError> {
        self.staging_counter += 1;
        let staging = format!("/tmp/.swegym-editor-{}-{}", std::process::id(), self.staging_counter);
        sandbox.write_file(&staging, text.as_bytes()).await?;
        let (q, s) = (quote(path), quote(&staging));
        let script = format!("mkdir -p -- \"$(dirname -- {q})\" && cat -- {s} > {q}; rc=$?; rm -f -- {s}; exit $rc");
        let out = sandbox.exec(&ExecRequest::new(script, self.timeout)).await?;
        if out.exit_code == Some(0) {
            Ok(None)
        } else {
            Ok(Some(EditorOutput::error(format!("Ran into {} while trying to write to {path}", out.output.trim()))))
        }
    }

    fn push_history(&mut self, path: &str, text: String) {
        let h = self.history.entry(path.to_string()).or_default();
        h.push(text);
        if h.len() > MAX_HISTORY_PER_FILE {
            h.remove(0);
        }
    }
}

/// `view` of a file, whole or a range.
fn view_file(path: &str, content: &str, view_range: Option<&[i64]>) -> EditorOutput {
    let Some(range) = view_range else {
        return EditorOutput::ok(make_output(content, path, 1));
    };
    let num_lines = count_lines(content) as i64;
    let invalid = |hint: String| EditorOutput::error(format!("Invalid `view_range` parameter: {range:?}. {hint}"));
    if range.len() != 2 {
        return invalid("It should be a list of two integers.".into());
    }
    let (start, mut end) = (range[0], range[1]);
    if start < 1 || start > num_lines {
        return invalid(format!("Its first element `{start}` should be within the range of lines of the file: [1, {num_lines}]."));
    }
    let mut warning = None;
    if end == -1 {
        end = num_lines;
    } else if end > num_lines {
        warning = Some(format!("We only show up to {num_lines} since there's only {num_lines} lines in this file"));
        end = num_lines;
    }
    if end < start {
        return invalid(format!("Its second element `{end}` should be greater than or equal to the first element `{start}`."));
    }
    let snippet = line_range(content, start as usize, end as usize);
    let mut out = make_output(&snippet, path, start as usize);
    if let Some(w) = warning {
        out.push_str(&format!("\nNOTE: {w}\n"));
    }
    EditorOutput::ok(out)
}

/// Lines `start..=end` (1-based) without the final newline.
fn line_range(content: &str, start: usize, end: usize) -> String {
    let lines: Vec<&str> = content.lines().collect();
    let from = start.saturating_sub(1).min(lines.len());
    let to = end.min(lines.len()).max(from);
    lines[from..to].join("\n")
}

/// Lines as Python counts them when iterating a file (a last line without `\n` counts).
fn count_lines(content: &str) -> usize {
    content.split_inclusive('\n').count()
}

/// `cat -n`-style output of a snippet starting at line `start_line`.
fn make_output(snippet: &str, description: &str, start_line: usize) -> String {
    let snippet = if snippet.chars().count() > MAX_RESPONSE_LEN_CHAR {
        snippet.chars().take(MAX_RESPONSE_LEN_CHAR).collect::<String>() + TEXT_FILE_CONTENT_TRUNCATED_NOTICE
    } else {
        snippet.to_string()
    };
    let numbered: Vec<String> = snippet.split('\n').enumerate().map(|(i, line)| format!("{:6}\t{line}", i + start_line)).collect();
    format!("Here's the result of running `cat -n` on {description}:\n{}\n", numbered.join("\n"))
}

/// Single-quotes a word for bash.
pub(crate) fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_output() {
        assert_eq!(make_output("a\nb", "/t/x.py", 1), "Here's the result of running `cat -n` on /t/x.py:\n     1\ta\n     2\tb\n");
        // A trailing newline shows as an empty last line, as `content.split('\n')` does in OpenHands.
        assert_eq!(make_output("a\n", "/t/x.py", 9), "Here's the result of running `cat -n` on /t/x.py:\n     9\ta\n    10\t\n");
    }

    #[test]
    fn view_ranges() {
        let content = "l1\nl2\nl3\nl4\n";
        let check = |range: &[i64], want: &str| assert_eq!(view_file("/f", content, Some(range)).text, want, "{range:?}");
        check(&[2, 3], "Here's the result of running `cat -n` on /f:\n     2\tl2\n     3\tl3\n");
        check(&[3, -1], "Here's the result of running `cat -n` on /f:\n     3\tl3\n     4\tl4\n");
        check(
            &[4, 9],
            "Here's the result of running `cat -n` on /f:\n     4\tl4\n\nNOTE: We only show up to 4 since there's only 4 lines in this file\n",
        );
        check(&[0, 2], "ERROR:\nInvalid `view_range` parameter: [0, 2]. Its first element `0` should be within the range of lines of the file: [1, 4].");
        check(&[3, 2], "ERROR:\nInvalid `view_range` parameter: [3, 2]. Its second element `2` should be greater than or equal to the first element `3`.");
        check(&[1], "ERROR:\nInvalid `view_range` parameter: [1]. It should be a list of two integers.");
        assert!(view_file("/f", content, Some(&[1, 2])).text.ends_with("     2\tl2\n"));
    }

    #[test]
    fn line_counting() {
        assert_eq!(count_lines(""), 0);
        assert_eq!(count_lines("a"), 1);
        assert_eq!(count_lines("a\n"), 1);
        assert_eq!(count_lines("a\nb"), 2);
    }
}
