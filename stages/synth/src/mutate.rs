//! Bug mutations of Python functions, found on a real parse tree (tree-sitter-python).
//!
//! Every mutation is one [`Edit`]: an exact byte range of the original file and its
//! replacement, so the gold patch is a minimal text diff. Sites are looked for only inside
//! function bodies and belong to the innermost enclosing function (its qualified name,
//! `Class.method`, `outer.inner`). [`PythonFile::mutations`] returns only mutants whose
//! re-parse has no ERROR or MISSING node and whose text differs from the original.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use tree_sitter::{Node, Parser, Tree};

use crate::SynthError;

/// The kinds of bug, each a family of rewrites (SWE-smith's procedural modifications).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MutationKind {
    /// `<` ↔ `<=`, `>` ↔ `>=`, `==` ↔ `!=`, `in` ↔ `not in`, `is` ↔ `is not`.
    ComparisonOperator,
    /// `and` ↔ `or`, and a `not` dropped.
    BooleanOperator,
    /// `+` ↔ `-`, `*` → `//`, `/` → `*`, `//` → `/`, `%` → `//`, `**` → `*`, `<<` ↔ `>>`,
    /// `&` ↔ `|`, `^` → `&`, and `+=` ↔ `-=`, `|=` ↔ `&=`.
    ArithmeticOperator,
    /// An integer literal `n` → `n + 1` or `n - 1` (outside subscripts).
    OffByOneConstant,
    /// A slice bound or a literal index moved by one (`a[i:j]` → `a[i:j + 1]`, `a[0]` → `a[1]`).
    OffByOneSlice,
    /// An `if` without `else` removed, or one operand of an `and` / `or` in a condition dropped.
    DropCondition,
    /// An expression statement (assignment, call, augmented assignment) removed.
    DropStatement,
    /// The first two positional arguments of a call swapped.
    SwapArguments,
    /// `return True` ↔ `return False`, `return cond` → `return not (cond)`, `return x` → `return None`.
    WrongReturn,
    /// The condition of an `if` / `elif` / `while` negated.
    NegateCondition,
    /// A read of one of the function's parameters misspelled (two middle letters swapped,
    /// or one dropped), so the line raises `NameError` where it runs: a one-line procedural
    /// bug whose traceback points at the line (the easy tier's kind; not in the default set).
    MisspelledName,
}

impl MutationKind {
    /// Every kind: the default ones, then `misspelled_name`.
    pub const ALL: [MutationKind; 11] = {
        let mut all = [MutationKind::MisspelledName; 11];
        let mut i = 0;
        while i < MutationKind::DEFAULT.len() {
            all[i] = MutationKind::DEFAULT[i];
            i += 1;
        }
        all
    };

    /// The kinds `swegym synth` uses when none are named (the logic bugs; a seeded run of
    /// this set gives the same plan as before `misspelled_name` existed).
    pub const DEFAULT: [MutationKind; 10] = [
        MutationKind::ComparisonOperator,
        MutationKind::BooleanOperator,
        MutationKind::ArithmeticOperator,
        MutationKind::OffByOneConstant,
        MutationKind::OffByOneSlice,
        MutationKind::DropCondition,
        MutationKind::DropStatement,
        MutationKind::SwapArguments,
        MutationKind::WrongReturn,
        MutationKind::NegateCondition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MutationKind::ComparisonOperator => "comparison_operator",
            MutationKind::BooleanOperator => "boolean_operator",
            MutationKind::ArithmeticOperator => "arithmetic_operator",
            MutationKind::OffByOneConstant => "off_by_one_constant",
            MutationKind::OffByOneSlice => "off_by_one_slice",
            MutationKind::DropCondition => "drop_condition",
            MutationKind::DropStatement => "drop_statement",
            MutationKind::SwapArguments => "swap_arguments",
            MutationKind::WrongReturn => "wrong_return",
            MutationKind::NegateCondition => "negate_condition",
            MutationKind::MisspelledName => "misspelled_name",
        }
    }

    /// The kind named `name` (as [`MutationKind::as_str`] writes it).
    pub fn parse(name: &str) -> Option<MutationKind> {
        MutationKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for MutationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Replace `source[start..end]` with `replacement`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Edit {
    pub start: usize,
    pub end: usize,
    pub replacement: String,
}

impl Edit {
    pub fn apply(&self, source: &str) -> String {
        let mut out = String::with_capacity(source.len() + self.replacement.len());
        out.push_str(&source[..self.start]);
        out.push_str(&self.replacement);
        out.push_str(&source[self.end..]);
        out
    }
}

/// One candidate bug.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mutation {
    pub kind: MutationKind,
    /// Repository-relative path of the file.
    pub file: String,
    /// Qualified name of the function the edit is in (`Class.method`).
    pub function: String,
    /// 1-based line of the edit.
    pub line: usize,
    pub edit: Edit,
    /// The original text of the edited range, for logs.
    pub original: String,
}

impl Mutation {
    /// `file::function` — the unit the train/test split and the per-function cap count.
    pub fn function_key(&self) -> String {
        format!("{}::{}", self.file, self.function)
    }
}

/// A parsed Python source file.
pub struct PythonFile {
    pub path: String,
    pub source: String,
    tree: Tree,
}

fn parser() -> Result<Parser, SynthError> {
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_python::LANGUAGE.into())
        .map_err(|e| SynthError::Parser(format!("loading the Python grammar: {e}")))?;
    Ok(parser)
}

/// True when `source` parses as Python with no ERROR or MISSING node.
pub fn parses_cleanly(source: &str) -> Result<bool, SynthError> {
    let tree = parser()?.parse(source, None).ok_or_else(|| SynthError::Parser("the parser gave no tree".into()))?;
    Ok(!tree.root_node().has_error())
}

impl PythonFile {
    /// Parses `source`; a file that does not parse cleanly is bad input (no mutant of it
    /// could be checked).
    pub fn parse(path: &str, source: String) -> Result<PythonFile, SynthError> {
        let tree = parser()?.parse(&source, None).ok_or_else(|| SynthError::Parser(format!("{path}: the parser gave no tree")))?;
        if tree.root_node().has_error() {
            return Err(SynthError::BadInput(format!("{path}: does not parse as Python 3 (tree-sitter ERROR node); skip this file")));
        }
        Ok(PythonFile { path: path.to_string(), source, tree })
    }

    /// Every mutation of every kind in `kinds`, in source order then kind order, each
    /// checked to re-parse cleanly; duplicate edits (the same rewrite found by two kinds)
    /// are kept once, under the first kind.
    pub fn mutations(&self, kinds: &[MutationKind]) -> Result<Vec<Mutation>, SynthError> {
        let mut found = Vec::new();
        let mut scope = Vec::new();
        self.walk(self.tree.root_node(), &mut scope, false, kinds, &mut found);
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut check = parser()?;
        for m in found {
            if !seen.insert(m.edit.clone()) {
                continue;
            }
            let mutant = m.edit.apply(&self.source);
            if mutant == self.source {
                continue;
            }
            let ok = check.parse(&mutant, None).is_some_and(|t| !t.root_node().has_error());
            if ok {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn text(&self, node: Node) -> &str {
        &self.source[node.start_byte()..node.end_byte()]
    }

    fn walk(&self, node: Node, scope: &mut Vec<String>, in_body: bool, kinds: &[MutationKind], out: &mut Vec<Mutation>) {
        let named_scope = matches!(node.kind(), "function_definition" | "class_definition");
        if named_scope {
            let name = node.child_by_field_name("name").map(|n| self.text(n).to_string()).unwrap_or_default();
            scope.push(name);
            let is_function = node.kind() == "function_definition";
            // Only the body is mutated (not decorators, parameters' defaults or annotations).
            if let Some(body) = node.child_by_field_name("body") {
                self.walk(body, scope, is_function, kinds, out);
            }
            scope.pop();
            return;
        }
        if in_body {
            for &kind in kinds {
                self.sites(kind, node, &scope.join("."), out);
            }
        }
        let mut cursor = node.walk();
        for child in node.children(&mut cursor) {
            self.walk(child, scope, in_body, kinds, out);
        }
    }

    fn push(&self, out: &mut Vec<Mutation>, kind: MutationKind, function: &str, start: usize, end: usize, replacement: String) {
        let line = self.source[..start].matches('\n').count() + 1;
        out.push(Mutation {
            kind,
            file: self.path.clone(),
            function: function.to_string(),
            line,
            original: self.source[start..end].to_string(),
            edit: Edit { start, end, replacement },
        });
    }

    /// Sites of `kind` rooted at `node` (each node is visited once, so each site is found once).
    fn sites(&self, kind: MutationKind, node: Node, function: &str, out: &mut Vec<Mutation>) {
        match kind {
            MutationKind::ComparisonOperator if node.kind() == "comparison_operator" => {
                let mut cursor = node.walk();
                for op in node.children(&mut cursor).filter(|c| !c.is_named()) {
                    let to = match op.kind() {
                        "<" => "<=",
                        "<=" => "<",
                        ">" => ">=",
                        ">=" => ">",
                        "==" => "!=",
                        "!=" => "==",
                        "in" => "not in",
                        "not in" => "in",
                        "is" => "is not",
                        "is not" => "is",
                        _ => continue,
                    };
                    self.push(out, kind, function, op.start_byte(), op.end_byte(), to.into());
                }
            }
            MutationKind::BooleanOperator if node.kind() == "boolean_operator" => {
                if let Some(op) = node.child_by_field_name("operator") {
                    let to = if op.kind() == "and" { "or" } else { "and" };
                    self.push(out, kind, function, op.start_byte(), op.end_byte(), to.into());
                }
            }
            MutationKind::BooleanOperator if node.kind() == "not_operator" => {
                if let Some(arg) = node.child_by_field_name("argument") {
                    self.push(out, kind, function, node.start_byte(), arg.start_byte(), String::new());
                }
            }
            MutationKind::ArithmeticOperator if node.kind() == "binary_operator" => {
                let (Some(left), Some(op), Some(right)) =
                    (node.child_by_field_name("left"), node.child_by_field_name("operator"), node.child_by_field_name("right"))
                else {
                    return;
                };
                let stringy = |n: Node| matches!(n.kind(), "string" | "concatenated_string");
                let to = match op.kind() {
                    "+" if stringy(left) || stringy(right) => return,
                    "%" if stringy(left) => return,
                    "+" => "-",
                    "-" => "+",
                    "*" => "//",
                    "/" => "*",
                    "//" => "/",
                    "%" => "//",
                    "**" => "*",
                    "<<" => ">>",
                    ">>" => "<<",
                    "&" => "|",
                    "|" => "&",
                    "^" => "&",
                    _ => return,
                };
                self.push(out, kind, function, op.start_byte(), op.end_byte(), to.into());
            }
            MutationKind::ArithmeticOperator if node.kind() == "augmented_assignment" => {
                if let Some(op) = node.child_by_field_name("operator") {
                    let to = match op.kind() {
                        "+=" => "-=",
                        "-=" => "+=",
                        "|=" => "&=",
                        "&=" => "|=",
                        _ => return,
                    };
                    self.push(out, kind, function, op.start_byte(), op.end_byte(), to.into());
                }
            }
            MutationKind::OffByOneConstant if node.kind() == "integer" && !in_subscript(node) => {
                if let Some(n) = decimal(self.text(node)) {
                    self.push(out, kind, function, node.start_byte(), node.end_byte(), (n + 1).to_string());
                    if n > 0 {
                        self.push(out, kind, function, node.start_byte(), node.end_byte(), (n - 1).to_string());
                    }
                }
            }
            MutationKind::OffByOneSlice if node.kind() == "slice" => {
                // Children: [start] ':' [stop] [':' [step]]; only start and stop are moved.
                let mut colons = 0;
                let mut cursor = node.walk();
                for child in node.children(&mut cursor) {
                    if child.kind() == ":" {
                        colons += 1;
                        continue;
                    }
                    if colons >= 2 || !child.is_named() || child.kind() == "comment" {
                        continue;
                    }
                    self.shift_by_one(out, kind, function, child);
                }
            }
            MutationKind::OffByOneSlice if node.kind() == "subscript" => {
                let mut cursor = node.walk();
                let indices: Vec<Node> = node.children_by_field_name("subscript", &mut cursor).collect();
                if let [index] = indices.as_slice() {
                    let literal = match index.kind() {
                        "integer" => Some(*index),
                        "unary_operator" => index.child_by_field_name("argument").filter(|a| a.kind() == "integer"),
                        _ => None,
                    };
                    if let Some(lit) = literal {
                        if let Some(n) = decimal(self.text(lit)) {
                            self.push(out, kind, function, lit.start_byte(), lit.end_byte(), (n + 1).to_string());
                            if n > 0 && index.kind() == "integer" {
                                self.push(out, kind, function, lit.start_byte(), lit.end_byte(), (n - 1).to_string());
                            }
                        }
                    }
                }
            }
            MutationKind::DropCondition if node.kind() == "if_statement" && node.child_by_field_name("alternative").is_none() => {
                self.remove_statement(out, kind, function, node);
            }
            MutationKind::DropCondition if node.kind() == "boolean_operator" && in_condition(node) => {
                let (Some(left), Some(right)) = (node.child_by_field_name("left"), node.child_by_field_name("right")) else {
                    return;
                };
                // Keep the left operand, or keep the right one.
                self.push(out, kind, function, left.end_byte(), node.end_byte(), String::new());
                self.push(out, kind, function, node.start_byte(), right.start_byte(), String::new());
            }
            MutationKind::DropStatement if node.kind() == "expression_statement" => {
                let mut cursor = node.walk();
                let only: Vec<Node> = node.named_children(&mut cursor).collect();
                let docstring_like = matches!(only.as_slice(), [n] if matches!(n.kind(), "string" | "concatenated_string" | "ellipsis"));
                if !docstring_like {
                    self.remove_statement(out, kind, function, node);
                }
            }
            MutationKind::SwapArguments if node.kind() == "call" => {
                let Some(args) = node.child_by_field_name("arguments").filter(|a| a.kind() == "argument_list") else {
                    return;
                };
                let mut cursor = args.walk();
                let named: Vec<Node> = args.named_children(&mut cursor).filter(|c| c.kind() != "comment").collect();
                let positional = |n: &Node| !matches!(n.kind(), "keyword_argument" | "list_splat" | "dictionary_splat" | "parenthesized_list_splat");
                if let [a, b, ..] = named.as_slice() {
                    if positional(a) && positional(b) && self.text(*a) != self.text(*b) {
                        let between = &self.source[a.end_byte()..b.start_byte()];
                        let replacement = format!("{}{between}{}", self.text(*b), self.text(*a));
                        self.push(out, kind, function, a.start_byte(), b.end_byte(), replacement);
                    }
                }
            }
            MutationKind::WrongReturn if node.kind() == "return_statement" => {
                let mut cursor = node.walk();
                let Some(value) = node.named_children(&mut cursor).find(|c| c.kind() != "comment") else {
                    return;
                };
                let text = self.text(value);
                let to = match value.kind() {
                    "true" => "False".to_string(),
                    "false" => "True".to_string(),
                    "none" => return,
                    "not_operator" => match value.child_by_field_name("argument") {
                        Some(arg) => self.text(arg).to_string(),
                        None => return,
                    },
                    "comparison_operator" | "boolean_operator" => format!("not ({text})"),
                    _ => "None".to_string(),
                };
                self.push(out, kind, function, value.start_byte(), value.end_byte(), to);
            }
            MutationKind::NegateCondition if matches!(node.kind(), "if_statement" | "elif_clause" | "while_statement") => {
                let Some(cond) = node.child_by_field_name("condition") else {
                    return;
                };
                if cond.kind() == "not_operator" {
                    return; // dropping that `not` is a boolean_operator mutation
                }
                let text = self.text(cond);
                let to = if is_atom(cond) { format!("not {text}") } else { format!("not ({text})") };
                self.push(out, kind, function, cond.start_byte(), cond.end_byte(), to);
            }
            MutationKind::MisspelledName if node.kind() == "identifier" && is_read(node) => {
                let name = self.text(node);
                if name.chars().count() < 3 || matches!(name, "self" | "cls") || !self.enclosing_parameters(node).iter().any(|p| p == name) {
                    return;
                }
                let typo = misspelling(name);
                if is_builtin(&typo) || self.has_word(&typo) {
                    return;
                }
                self.push(out, kind, function, node.start_byte(), node.end_byte(), typo);
            }
            _ => {}
        }
    }

    /// The parameter names of the innermost function (or lambda) around `node`.
    fn enclosing_parameters(&self, node: Node) -> Vec<String> {
        let mut cur = node;
        while let Some(p) = cur.parent() {
            if matches!(p.kind(), "function_definition" | "lambda") {
                let Some(params) = p.child_by_field_name("parameters") else { return Vec::new() };
                let mut names = Vec::new();
                let mut cursor = params.walk();
                for param in params.named_children(&mut cursor) {
                    let name = match param.kind() {
                        "identifier" => Some(param),
                        "default_parameter" | "typed_default_parameter" => param.child_by_field_name("name"),
                        "typed_parameter" | "list_splat_pattern" | "dictionary_splat_pattern" => {
                            let mut c = param.walk();
                            let first = param.named_children(&mut c).find(|n| n.kind() == "identifier");
                            first
                        }
                        _ => None,
                    };
                    if let Some(n) = name.filter(|n| n.kind() == "identifier") {
                        names.push(self.text(n).to_string());
                    }
                }
                return names;
            }
            cur = p;
        }
        Vec::new()
    }

    /// True when `word` occurs in the file as a whole identifier-like word.
    fn has_word(&self, word: &str) -> bool {
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        self.source.match_indices(word).any(|(i, _)| {
            let before = self.source[..i].chars().next_back();
            let after = self.source[i + word.len()..].chars().next();
            !before.is_some_and(ident) && !after.is_some_and(ident)
        })
    }

    /// `e` → `e + 1` and `e - 1` (literals folded: `2` → `3`, `1`).
    fn shift_by_one(&self, out: &mut Vec<Mutation>, kind: MutationKind, function: &str, e: Node) {
        let text = self.text(e);
        if e.kind() == "integer" {
            if let Some(n) = decimal(text) {
                self.push(out, kind, function, e.start_byte(), e.end_byte(), (n + 1).to_string());
                if n > 0 {
                    self.push(out, kind, function, e.start_byte(), e.end_byte(), (n - 1).to_string());
                }
            }
            return;
        }
        let base = if is_atom(e) || e.kind() == "binary_operator" && matches!(e.child_by_field_name("operator").map(|o| o.kind()), Some("+" | "-")) {
            text.to_string()
        } else {
            format!("({text})")
        };
        self.push(out, kind, function, e.start_byte(), e.end_byte(), format!("{base} + 1"));
        self.push(out, kind, function, e.start_byte(), e.end_byte(), format!("{base} - 1"));
    }

    /// Removes a statement's whole lines; when it is the only statement of its block it
    /// becomes `pass`. Skipped when another statement shares its lines.
    fn remove_statement(&self, out: &mut Vec<Mutation>, kind: MutationKind, function: &str, stmt: Node) {
        let Some(block) = stmt.parent().filter(|p| p.kind() == "block") else {
            return;
        };
        let line_start = self.source[..stmt.start_byte()].rfind('\n').map_or(0, |i| i + 1);
        if !self.source[line_start..stmt.start_byte()].trim().is_empty() {
            return;
        }
        let line_end = self.source[stmt.end_byte()..].find('\n').map_or(self.source.len(), |i| stmt.end_byte() + i);
        let rest = self.source[stmt.end_byte()..line_end].trim();
        if !(rest.is_empty() || rest.starts_with('#')) {
            return;
        }
        let mut cursor = block.walk();
        let statements = block.named_children(&mut cursor).filter(|c| c.kind() != "comment").count();
        if statements > 1 {
            let end = (line_end + 1).min(self.source.len());
            self.push(out, kind, function, line_start, end, String::new());
        } else {
            self.push(out, kind, function, stmt.start_byte(), stmt.end_byte(), "pass".into());
        }
    }
}

/// A node that needs no parentheses around it when prefixed by `not` or suffixed by `+ 1`.
fn is_atom(n: Node) -> bool {
    matches!(
        n.kind(),
        "identifier" | "attribute" | "call" | "subscript" | "integer" | "float" | "parenthesized_expression" | "true" | "false" | "none" | "string" | "list" | "tuple" | "dictionary" | "set"
    ) || n.kind() == "comparison_operator"
}

/// A decimal literal's value (no underscores, hex, octal or huge values).
fn decimal(text: &str) -> Option<u64> {
    if text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// True when an integer sits in a slice or as a subscript's index (the slice kind's sites).
fn in_subscript(node: Node) -> bool {
    let mut cur = node;
    while let Some(p) = cur.parent() {
        match p.kind() {
            "slice" => return true,
            "subscript" => {
                let mut cursor = p.walk();
                return p.children_by_field_name("subscript", &mut cursor).any(|s| s.id() == cur.id());
            }
            "unary_operator" => cur = p,
            _ => return false,
        }
    }
    false
}

/// The misspelling of a name: its two middle letters swapped (`iterable` → `itearble`), or
/// when they are the same letter, one of them dropped (`pattern` → `patern`).
fn misspelling(name: &str) -> String {
    let mut chars: Vec<char> = name.chars().collect();
    let i = chars.len() / 2 - 1;
    if chars[i] != chars[i + 1] {
        chars.swap(i, i + 1);
    } else {
        chars.remove(i);
    }
    chars.into_iter().collect()
}

/// Python's builtins that a misspelling could land on (it would then not raise).
fn is_builtin(name: &str) -> bool {
    const BUILTINS: &[&str] = &[
        "abs", "all", "any", "ascii", "bin", "bool", "bytes", "callable", "chr", "dict", "dir", "divmod", "enumerate", "eval", "exec", "filter", "float", "format", "frozenset",
        "getattr", "globals", "hasattr", "hash", "help", "hex", "id", "input", "int", "isinstance", "issubclass", "iter", "len", "list", "locals", "map", "max", "min", "next",
        "object", "oct", "open", "ord", "pow", "print", "property", "range", "repr", "reversed", "round", "set", "setattr", "slice", "sorted", "str", "sum", "super", "tuple",
        "type", "vars", "zip", "None", "True", "False",
    ];
    BUILTINS.contains(&name)
}

/// True when an identifier is read where it stands (not assigned, not a parameter, not an
/// attribute or keyword name, not in an import, a pattern, a decorator or an f-string).
fn is_read(node: Node) -> bool {
    let Some(parent) = node.parent() else { return false };
    let is_field = |field: &str| parent.child_by_field_name(field).is_some_and(|c| c.id() == node.id());
    match parent.kind() {
        "attribute" => is_field("object"),
        "keyword_argument" => is_field("value"),
        "assignment" | "augmented_assignment" | "for_statement" | "for_in_clause" => is_field("right"),
        "call" | "argument_list" | "binary_operator" | "comparison_operator" | "boolean_operator" | "not_operator" | "unary_operator" | "return_statement"
        | "subscript" | "parenthesized_expression" | "list" | "tuple" | "set" | "pair" | "conditional_expression" | "if_statement" | "while_statement" | "elif_clause"
        | "slice" | "list_splat" | "dictionary_splat" | "yield" | "await" => true,
        _ => false,
    }
}

/// True when a node is (part of) the condition of an `if` / `elif` / `while`.
fn in_condition(node: Node) -> bool {
    let mut cur = node;
    while let Some(p) = cur.parent() {
        match p.kind() {
            "if_statement" | "elif_clause" | "while_statement" => {
                return p.child_by_field_name("condition").is_some_and(|c| c.id() == cur.id());
            }
            "boolean_operator" | "parenthesized_expression" | "not_operator" => cur = p,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mutants of `kind` in `source`, each as the mutated line(s) that differ.
    fn mutants(kind: MutationKind, source: &str) -> Vec<String> {
        let file = PythonFile::parse("m.py", source.to_string()).unwrap();
        file.mutations(&[kind])
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m.kind, kind);
                let mutant = m.edit.apply(source);
                assert!(parses_cleanly(&mutant).unwrap());
                let changed: Vec<&str> = mutant.lines().filter(|l| !source.lines().any(|o| o == *l)).collect();
                format!("{}:{}: {}", m.function, m.line, if changed.is_empty() { "<removed>".into() } else { changed.join(" / ").trim().to_string() })
            })
            .collect()
    }

    fn check(kind: MutationKind, source: &str, expect: &[&str]) {
        let got = mutants(kind, source);
        assert_eq!(got, expect, "{kind}: got {got:#?}");
    }

    #[test]
    fn comparison_operator() {
        check(
            MutationKind::ComparisonOperator,
            "def f(a, b):\n    return a < b and a is not None and b not in (1,)\n",
            &[
                "f:2: return a <= b and a is not None and b not in (1,)",
                "f:2: return a < b and a is None and b not in (1,)",
                "f:2: return a < b and a is not None and b in (1,)",
            ],
        );
    }

    #[test]
    fn boolean_operator() {
        check(
            MutationKind::BooleanOperator,
            "def f(a, b):\n    return a and not b\n",
            &["f:2: return a or not b", "f:2: return a and b"],
        );
    }

    #[test]
    fn arithmetic_operator() {
        check(
            MutationKind::ArithmeticOperator,
            "def f(a, b):\n    s = 'x' + a\n    b += a * 2\n    return '%s' % a\n",
            &["f:3: b -= a * 2", "f:3: b += a // 2"],
        );
    }

    #[test]
    fn off_by_one_constant() {
        check(
            MutationKind::OffByOneConstant,
            "def f(a):\n    n = 0\n    return a[1] + 2\n",
            &["f:2: n = 1", "f:3: return a[1] + 3", "f:3: return a[1] + 1"],
        );
    }

    #[test]
    fn off_by_one_slice() {
        check(
            MutationKind::OffByOneSlice,
            "def f(a, i):\n    return a[i:2], a[-1]\n",
            &["f:2: return a[i + 1:2], a[-1]", "f:2: return a[i - 1:2], a[-1]", "f:2: return a[i:3], a[-1]", "f:2: return a[i:1], a[-1]", "f:2: return a[i:2], a[-2]"],
        );
    }

    #[test]
    fn drop_condition() {
        check(
            MutationKind::DropCondition,
            "def f(a, b):\n    if a and b:\n        return 1\n    return 2\n",
            &["f:2: <removed>", "f:2: if a:", "f:2: if b:"],
        );
        // An if with an else is not removed; a lone if becomes `pass`.
        check(MutationKind::DropCondition, "def g(a):\n    if a:\n        x()\n    else:\n        y()\n", &[]);
        check(MutationKind::DropCondition, "def h(a):\n    if a:\n        x()\n", &["h:2: pass"]);
    }

    #[test]
    fn drop_statement() {
        check(
            MutationKind::DropStatement,
            "def f(a):\n    \"\"\"Doc.\"\"\"\n    a.append(1)  # note\n    a = 2; b = 3\n    return a\n",
            &["f:3: <removed>"],
        );
    }

    #[test]
    fn swap_arguments() {
        check(
            MutationKind::SwapArguments,
            "def f(a, b):\n    return g(a, b, key=1) + h(a, a) + k(*a, b)\n",
            &["f:2: return g(b, a, key=1) + h(a, a) + k(*a, b)"],
        );
    }

    #[test]
    fn wrong_return() {
        check(
            MutationKind::WrongReturn,
            "def f(a):\n    if a:\n        return True\n    if a > 1:\n        return a == 2\n    if not a:\n        return not a\n    return a.x\n",
            &["f:3: return False", "f:5: return not (a == 2)", "f:7: return a", "f:8: return None"],
        );
    }

    #[test]
    fn negate_condition() {
        check(
            MutationKind::NegateCondition,
            "def f(a, b):\n    while a < b:\n        a += 1\n    if a or b:\n        return 1\n    elif not a:\n        return 2\n",
            &["f:2: while not a < b:", "f:4: if not (a or b):"],
        );
    }

    #[test]
    fn misspelled_name() {
        check(
            MutationKind::MisspelledName,
            "def f(items, pattern, key=None, *rest):\n    out = [x for x in items if key(x)]\n    items = pattern.sub(out, rest)\n    return g(pattern=items)\n",
            &[
                "f:2: out = [x for x in ietms if key(x)]",
                "f:2: out = [x for x in items if eky(x)]",
                "f:3: items = patern.sub(out, rest)",
                "f:3: items = pattern.sub(out, rset)",
                "f:4: return g(pattern=ietms)",
            ],
        );
        // No site when the misspelling is a name the file uses, or a builtin.
        check(MutationKind::MisspelledName, "def f(items):\n    return items\nietms = 1\n", &[]);
        check(MutationKind::MisspelledName, "def f(eln):\n    return eln\n", &[]);
        assert_eq!(misspelling("iterable"), "itearble");
        assert_eq!(misspelling("pattern"), "patern");
    }

    #[test]
    fn sites_belong_to_the_innermost_function_and_module_code_is_left_alone() {
        let source = "X = 1 + 2\nclass C:\n    def m(self):\n        def inner():\n            return 1 + 2\n        return 3 - 4\n";
        let file = PythonFile::parse("m.py", source.into()).unwrap();
        let ms = file.mutations(&[MutationKind::ArithmeticOperator]).unwrap();
        let names: Vec<(String, usize)> = ms.iter().map(|m| (m.function.clone(), m.line)).collect();
        assert_eq!(names, vec![("C.m.inner".to_string(), 5), ("C.m".to_string(), 6)]);
        assert_eq!(ms[0].function_key(), "m.py::C.m.inner");
    }

    #[test]
    fn every_mutant_of_every_kind_parses() {
        let source = "def f(a, bound=1):\n    '''Doc.'''\n    total = 0\n    for i in range(len(a) - 1):\n        if a[i] > bound and not a[i + 1]:\n            total += a[i:i + 2][0] * 3\n        elif a[i] is None:\n            continue\n    while total > 10:\n        total //= 2\n    return max(total, bound) == 4\n";
        let file = PythonFile::parse("m.py", source.into()).unwrap();
        let all = file.mutations(&MutationKind::ALL).unwrap();
        assert!(MutationKind::DEFAULT.iter().all(|k| MutationKind::ALL.contains(k)));
        let kinds: BTreeSet<MutationKind> = all.iter().map(|m| m.kind).collect();
        assert_eq!(kinds.len(), MutationKind::ALL.len(), "every kind has a site here: {kinds:?}");
        for m in &all {
            assert!(parses_cleanly(&m.edit.apply(source)).unwrap(), "{m:?}");
        }
    }

    #[test]
    fn a_file_that_does_not_parse_is_named() {
        let e = PythonFile::parse("bad.py", "def f(:\n".into()).err().unwrap();
        assert!(e.to_string().contains("bad.py"), "{e}");
    }
}
