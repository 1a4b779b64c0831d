//! Agent actions in OpenHands' text function-call form, and a parser tolerant of what
//! small models write.
//!
//! The form (OpenHands `fn_call_converter`):
//!
//! ```text
//! optional reasoning
//! <function=str_replace_editor>
//! <parameter=command>view</parameter>
//! <parameter=path>/testbed/setup.py</parameter>
//! </function>
//! ```
//!
//! Tolerated: prose before and after the call; several calls (the first one counts, as
//! OpenHands executes one call per turn); a missing `</function>` (the stop sequence eats it)
//! or `</parameter>` (a parameter then ends at the next `<parameter=` or the end of the
//! call); `<function=execute_bash>` whose body has no parameter tags (the body is the
//! command, as OpenHands accepts); `bash` as a name for `execute_bash`. A parameter value
//! loses one leading and one trailing newline (the ones the writer adds around multi-line
//! values) — not all whitespace as OpenHands' `.strip()` does, which would eat the
//! indentation of an `old_str`; `command`, `path` and the integer parameters are trimmed.

use serde::Serialize;

/// The editor's sub-commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EditorCommand {
    View,
    Create,
    StrReplace,
    Insert,
    UndoEdit,
}

impl EditorCommand {
    pub const ALL: [EditorCommand; 5] =
        [EditorCommand::View, EditorCommand::Create, EditorCommand::StrReplace, EditorCommand::Insert, EditorCommand::UndoEdit];

    pub fn as_str(self) -> &'static str {
        match self {
            EditorCommand::View => "view",
            EditorCommand::Create => "create",
            EditorCommand::StrReplace => "str_replace",
            EditorCommand::Insert => "insert",
            EditorCommand::UndoEdit => "undo_edit",
        }
    }

    fn parse(s: &str) -> Option<EditorCommand> {
        EditorCommand::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// The arguments of one `str_replace_editor` call (validated per command by the editor).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EditorArgs {
    pub command: EditorCommand,
    pub path: String,
    pub file_text: Option<String>,
    pub old_str: Option<String>,
    pub new_str: Option<String>,
    pub insert_line: Option<i64>,
    pub view_range: Option<Vec<i64>>,
}

/// One tool call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "tool", rename_all = "snake_case")]
pub enum Action {
    ExecuteBash { command: String },
    StrReplaceEditor(EditorArgs),
    Finish { message: String },
}

impl Action {
    /// The tool's name, as in `EXECUTION RESULT of [NAME]`.
    pub fn tool_name(&self) -> &'static str {
        match self {
            Action::ExecuteBash { .. } => "execute_bash",
            Action::StrReplaceEditor(_) => "str_replace_editor",
            Action::Finish { .. } => "finish",
        }
    }

    /// The call in the text form (what an assistant message holds).
    pub fn render(&self) -> String {
        let mut params: Vec<(&str, String)> = Vec::new();
        match self {
            Action::ExecuteBash { command } => params.push(("command", command.clone())),
            Action::Finish { message } => {
                if !message.is_empty() {
                    params.push(("message", message.clone()));
                }
            }
            Action::StrReplaceEditor(a) => {
                params.push(("command", a.command.as_str().to_string()));
                params.push(("path", a.path.clone()));
                if let Some(v) = &a.file_text {
                    params.push(("file_text", v.clone()));
                }
                if let Some(v) = &a.old_str {
                    params.push(("old_str", v.clone()));
                }
                if let Some(v) = &a.new_str {
                    params.push(("new_str", v.clone()));
                }
                if let Some(v) = a.insert_line {
                    params.push(("insert_line", v.to_string()));
                }
                if let Some(v) = &a.view_range {
                    params.push(("view_range", format!("[{}]", v.iter().map(i64::to_string).collect::<Vec<_>>().join(", "))));
                }
            }
        }
        let mut out = format!("<function={}>\n", self.tool_name());
        for (name, value) in params {
            // Like OpenHands' writer: multi-line values get a newline after the opening tag
            // and before the closing one.
            if value.contains('\n') {
                out.push_str(&format!("<parameter={name}>\n{value}\n</parameter>\n"));
            } else {
                out.push_str(&format!("<parameter={name}>{value}</parameter>\n"));
            }
        }
        out.push_str("</function>");
        out
    }
}

/// Why a reply holds no usable call (the agent is told, and the format-error count grows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no function call found (expected <function=NAME> ... </function>)")]
    NoFunctionCall,
    #[error("unknown function `{0}`; the functions are execute_bash, str_replace_editor and finish")]
    UnknownFunction(String),
    #[error("missing required parameters for function '{function}': {parameter}")]
    MissingParameter { function: String, parameter: String },
    #[error("parameter '{parameter}' of function '{function}': {message}")]
    InvalidParameter { function: String, parameter: String, message: String },
    #[error("parameter '{parameter}' is not allowed for function '{function}'")]
    UnknownParameter { function: String, parameter: String },
}

const FN_OPEN: &str = "<function=";
const FN_CLOSE: &str = "</function>";
const PARAM_OPEN: &str = "<parameter=";
const PARAM_CLOSE: &str = "</parameter>";

/// Parses the first function call of an assistant reply.
pub fn parse_action(text: &str) -> Result<Action, ParseError> {
    let Some(start) = text.find(FN_OPEN) else {
        return Err(ParseError::NoFunctionCall);
    };
    let rest = &text[start + FN_OPEN.len()..];
    let Some(name_end) = rest.find('>') else {
        return Err(ParseError::NoFunctionCall);
    };
    let name = rest[..name_end].trim().trim_matches(|c| c == '"' || c == '\'');
    let after = &rest[name_end + 1..];
    // The call ends at its closing tag, else at the next call, else at the end.
    let body_end = [after.find(FN_CLOSE), after.find(FN_OPEN)].into_iter().flatten().min().unwrap_or(after.len());
    let body = &after[..body_end];
    let params = parse_params(body);
    match name {
        "execute_bash" | "bash" => {
            let function = "execute_bash";
            check_allowed(function, &params, &["command", "is_input", "timeout"])?;
            let command = match param(&params, "command") {
                Some(c) => c.trim().to_string(),
                // OpenHands also takes the whole body as the command when no tags are used.
                None if params.is_empty() => strip_one_newline(body).trim().to_string(),
                None => String::new(),
            };
            if command.is_empty() {
                return Err(ParseError::MissingParameter { function: function.into(), parameter: "command".into() });
            }
            Ok(Action::ExecuteBash { command })
        }
        "finish" => {
            check_allowed("finish", &params, &["message", "task_completed", "outputs"])?;
            Ok(Action::Finish { message: param(&params, "message").map(|m| m.trim().to_string()).unwrap_or_default() })
        }
        "str_replace_editor" => parse_editor(&params).map(Action::StrReplaceEditor),
        other => Err(ParseError::UnknownFunction(other.to_string())),
    }
}

fn parse_editor(params: &[(String, String)]) -> Result<EditorArgs, ParseError> {
    let function = "str_replace_editor";
    check_allowed(function, params, &["command", "path", "file_text", "old_str", "new_str", "insert_line", "view_range"])?;
    let missing = |p: &str| ParseError::MissingParameter { function: function.into(), parameter: p.into() };
    let invalid = |p: &str, m: String| ParseError::InvalidParameter { function: function.into(), parameter: p.into(), message: m };
    let command = param(params, "command").map(str::trim).ok_or_else(|| missing("command"))?;
    let command = EditorCommand::parse(command).ok_or_else(|| {
        invalid(
            "command",
            format!(
                "is expected to be one of {:?}, got `{command}`",
                EditorCommand::ALL.map(EditorCommand::as_str)
            ),
        )
    })?;
    let path = param(params, "path").map(|p| p.trim().to_string()).ok_or_else(|| missing("path"))?;
    let insert_line = match param(params, "insert_line") {
        None => None,
        Some(v) => Some(v.trim().parse::<i64>().map_err(|_| invalid("insert_line", "is expected to be an integer".into()))?),
    };
    let view_range = match param(params, "view_range") {
        None => None,
        Some(v) => Some(parse_int_list(v).ok_or_else(|| invalid("view_range", "is expected to be an array of integers, like [1, 20]".into()))?),
    };
    Ok(EditorArgs {
        command,
        path,
        file_text: param(params, "file_text").map(str::to_string),
        old_str: param(params, "old_str").map(str::to_string),
        new_str: param(params, "new_str").map(str::to_string),
        insert_line,
        view_range,
    })
}

/// `[1, 20]`, `1,20`, `1 20` → [1, 20].
fn parse_int_list(v: &str) -> Option<Vec<i64>> {
    let inner = v.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>().ok())
        .collect()
}

fn check_allowed(function: &str, params: &[(String, String)], allowed: &[&str]) -> Result<(), ParseError> {
    match params.iter().find(|(name, _)| !allowed.contains(&name.as_str())) {
        Some((name, _)) => Err(ParseError::UnknownParameter { function: function.into(), parameter: name.clone() }),
        None => Ok(()),
    }
}

/// The first value of a parameter.
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// `<parameter=P>value</parameter>` pairs in order; a missing closing tag ends the value at
/// the next opening tag or the end of the body.
fn parse_params(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find(PARAM_OPEN) {
        let after = &rest[start + PARAM_OPEN.len()..];
        let Some(name_end) = after.find('>') else { break };
        let name = after[..name_end].trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        let value_and_rest = &after[name_end + 1..];
        let close = value_and_rest.find(PARAM_CLOSE);
        let next_open = value_and_rest.find(PARAM_OPEN);
        let (value_end, resume) = match (close, next_open) {
            (Some(c), Some(n)) if n < c => (n, n),
            (Some(c), _) => (c, c + PARAM_CLOSE.len()),
            (None, Some(n)) => (n, n),
            (None, None) => (value_and_rest.len(), value_and_rest.len()),
        };
        let value = strip_one_newline(&value_and_rest[..value_end]);
        if !out.iter().any(|(n, _): &(String, String)| *n == name) {
            out.push((name, value.to_string()));
        }
        rest = &value_and_rest[resume..];
    }
    out
}

/// Drops one leading and one trailing newline.
fn strip_one_newline(v: &str) -> &str {
    let v = v.strip_prefix("\r\n").or_else(|| v.strip_prefix('\n')).unwrap_or(v);
    v.strip_suffix("\r\n").or_else(|| v.strip_suffix('\n')).unwrap_or(v)
}

/// True when the reply has no function-call syntax at all (a plain message; what the stuck
/// detector's monologue rule counts).
pub fn is_plain_message(text: &str) -> bool {
    !text.contains(FN_OPEN)
}

/// A reply as it is kept in the conversation: an unclosed call (the `</function` stop
/// sequence removes the closing tag) gets its `</function>` back, so the stored text is
/// well-formed for training.
pub fn normalize_reply(text: &str) -> String {
    let trimmed = text.trim_end();
    match trimmed.find(FN_OPEN) {
        Some(start) if !trimmed[start..].contains(FN_CLOSE) => {
            let mut out = trimmed.trim_end_matches("</function").trim_end().to_string();
            out.push('\n');
            out.push_str(FN_CLOSE);
            out
        }
        _ => trimmed.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bash(c: &str) -> Result<Action, ParseError> {
        Ok(Action::ExecuteBash { command: c.into() })
    }

    fn editor(command: EditorCommand, path: &str) -> EditorArgs {
        EditorArgs { command, path: path.into(), file_text: None, old_str: None, new_str: None, insert_line: None, view_range: None }
    }

    fn check(input: &str, expect: Result<Action, ParseError>) {
        assert_eq!(parse_action(input), expect, "input: {input:?}");
    }

    #[test]
    fn well_formed_calls() {
        check("<function=execute_bash>\n<parameter=command>ls -la</parameter>\n</function>", bash("ls -la"));
        check(
            "Let me look.\n<function=str_replace_editor>\n<parameter=command>view</parameter>\n<parameter=path>/testbed</parameter>\n</function>",
            Ok(Action::StrReplaceEditor(editor(EditorCommand::View, "/testbed"))),
        );
        check(
            "<function=str_replace_editor>\n<parameter=command>view</parameter>\n<parameter=path>/testbed/a.py</parameter>\n<parameter=view_range>[10, 20]</parameter>\n</function>",
            Ok(Action::StrReplaceEditor(EditorArgs { view_range: Some(vec![10, 20]), ..editor(EditorCommand::View, "/testbed/a.py") })),
        );
        check("<function=finish>\n</function>", Ok(Action::Finish { message: String::new() }));
        check("<function=finish>\n<parameter=message>Done.</parameter>\n</function>", Ok(Action::Finish { message: "Done.".into() }));
    }

    #[test]
    fn multiline_values_keep_indentation() {
        let input = "<function=str_replace_editor>\n<parameter=command>str_replace</parameter>\n<parameter=path>/testbed/a.py</parameter>\n<parameter=old_str>\n    x = 1\n    y = 2\n</parameter>\n<parameter=new_str>\n    x = 1\n\n</parameter>\n</function>";
        check(
            input,
            Ok(Action::StrReplaceEditor(EditorArgs {
                old_str: Some("    x = 1\n    y = 2".into()),
                new_str: Some("    x = 1\n".into()),
                ..editor(EditorCommand::StrReplace, "/testbed/a.py")
            })),
        );
        // An empty new_str deletes.
        let input = "<function=str_replace_editor>\n<parameter=command>str_replace</parameter>\n<parameter=path>/a</parameter>\n<parameter=old_str>x</parameter>\n<parameter=new_str></parameter>\n</function>";
        check(
            input,
            Ok(Action::StrReplaceEditor(EditorArgs { old_str: Some("x".into()), new_str: Some(String::new()), ..editor(EditorCommand::StrReplace, "/a") })),
        );
    }

    #[test]
    fn render_round_trips() {
        let actions = [
            Action::ExecuteBash { command: "cd /testbed && python -m pytest -q tests/test_x.py".into() },
            Action::ExecuteBash { command: "cat <<'EOF' > /tmp/x.py\nprint(1)\nEOF".into() },
            Action::Finish { message: "I fixed it.".into() },
            Action::StrReplaceEditor(EditorArgs {
                old_str: Some("        return a\n".into()),
                new_str: Some("\n        return b".into()),
                ..editor(EditorCommand::StrReplace, "/testbed/m.py")
            }),
            Action::StrReplaceEditor(EditorArgs { insert_line: Some(0), new_str: Some("import os".into()), ..editor(EditorCommand::Insert, "/t/a.py") }),
            Action::StrReplaceEditor(EditorArgs { view_range: Some(vec![3, -1]), ..editor(EditorCommand::View, "/t/a.py") }),
            Action::StrReplaceEditor(EditorArgs { file_text: Some("a\nb\n".into()), ..editor(EditorCommand::Create, "/t/n.py") }),
        ];
        for a in actions {
            assert_eq!(parse_action(&a.render()), Ok(a.clone()), "{}", a.render());
        }
    }

    #[test]
    fn malformed_model_output() {
        // No closing </function> (eaten by the stop sequence) and no </parameter>.
        check("<function=execute_bash>\n<parameter=command>ls\n", bash("ls"));
        check("<function=execute_bash>\n<parameter=command>pwd</parameter>\n</function", bash("pwd"));
        // Body without parameter tags is the command.
        check("<function=execute_bash>\ngrep -rn foo /testbed\n</function>", bash("grep -rn foo /testbed"));
        check("<function=bash><parameter=command>ls</parameter></function>", bash("ls"));
        // Several calls: the first one counts.
        check(
            "<function=execute_bash>\n<parameter=command>ls</parameter>\n</function>\n<function=finish>\n</function>",
            bash("ls"),
        );
        // A second call starting before the first one's closing tag.
        check("<function=execute_bash>\n<parameter=command>ls</parameter>\n<function=finish>\n</function>", bash("ls"));
        // Prose after the call.
        check("<function=execute_bash>\n<parameter=command>ls</parameter>\n</function>\nThis will list the files.", bash("ls"));
        // A missing </parameter> before the next parameter.
        check(
            "<function=str_replace_editor>\n<parameter=command>view\n<parameter=path>/testbed\n</function>",
            Ok(Action::StrReplaceEditor(editor(EditorCommand::View, "/testbed"))),
        );
        // Quoted names.
        check("<function=\"execute_bash\">\n<parameter=\"command\">ls</parameter>\n</function>", bash("ls"));
        // Errors.
        check("I will now look at the files.", Err(ParseError::NoFunctionCall));
        check("```python\nprint('hi')\n```", Err(ParseError::NoFunctionCall));
        check("<function=execute_bash", Err(ParseError::NoFunctionCall));
        check("<function=python>\n<parameter=code>1</parameter>\n</function>", Err(ParseError::UnknownFunction("python".into())));
        check(
            "<function=execute_bash>\n<parameter=command></parameter>\n</function>",
            Err(ParseError::MissingParameter { function: "execute_bash".into(), parameter: "command".into() }),
        );
        check(
            "<function=str_replace_editor>\n<parameter=path>/a</parameter>\n</function>",
            Err(ParseError::MissingParameter { function: "str_replace_editor".into(), parameter: "command".into() }),
        );
        check(
            "<function=str_replace_editor>\n<parameter=command>delete</parameter>\n<parameter=path>/a</parameter>\n</function>",
            Err(ParseError::InvalidParameter {
                function: "str_replace_editor".into(),
                parameter: "command".into(),
                message: "is expected to be one of [\"view\", \"create\", \"str_replace\", \"insert\", \"undo_edit\"], got `delete`".into(),
            }),
        );
        check(
            "<function=str_replace_editor>\n<parameter=command>insert</parameter>\n<parameter=path>/a</parameter>\n<parameter=insert_line>two</parameter>\n</function>",
            Err(ParseError::InvalidParameter { function: "str_replace_editor".into(), parameter: "insert_line".into(), message: "is expected to be an integer".into() }),
        );
        check(
            "<function=str_replace_editor>\n<parameter=command>view</parameter>\n<parameter=path>/a</parameter>\n<parameter=view_range>[1, x]</parameter>\n</function>",
            Err(ParseError::InvalidParameter {
                function: "str_replace_editor".into(),
                parameter: "view_range".into(),
                message: "is expected to be an array of integers, like [1, 20]".into(),
            }),
        );
        check(
            "<function=execute_bash>\n<parameter=cmd>ls</parameter>\n</function>",
            Err(ParseError::UnknownParameter { function: "execute_bash".into(), parameter: "cmd".into() }),
        );
    }

    #[test]
    fn view_range_forms() {
        for (v, want) in [("[1, 20]", Some(vec![1, 20])), ("1,20", Some(vec![1, 20])), ("[5, -1]", Some(vec![5, -1])), ("1 2", Some(vec![1, 2])), ("[a]", None)] {
            assert_eq!(parse_int_list(v), want, "{v}");
        }
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_reply("x\n<function=finish>\n"), "x\n<function=finish>\n</function>");
        assert_eq!(normalize_reply("<function=finish>\n</function"), "<function=finish>\n</function>");
        assert_eq!(normalize_reply("<function=finish>\n</function>\n\n"), "<function=finish>\n</function>");
        assert_eq!(normalize_reply("just prose  "), "just prose");
    }
}
