//! swegym-report: what an RFT run did, per iteration — the tables the SWE-Gym paper shows
//! (resolve rate and empty-patch rate shrinking or growing per iteration), in the terminal
//! and in `report.md`, as `metrics.parquet` (one row per policy and split), and as SVG
//! plots of resolve rate and empty-patch rate per iteration, one line per split.
//!
//! Policy indexing (as in `swegym_schema::metrics`): policy_0 is the base model (its
//! held-out row is the zero-shot row) and policy_{i+1} = base + adapter_i. The held-out
//! table has one row per policy; the training table one row per iteration i, sampled by
//! policy_i, with what the filter kept and what training did with it. With k > 1 held-out
//! rollouts per task the held-out table and `metrics.parquet` add Pass@1, Pass@k and (with a
//! verifier) Best@k and Random@k, and say which one the submission is.
//!
//! With per-task held-out outcomes in the metrics, rates get 95% bootstrap intervals over
//! tasks (table columns and interval bars in the plots), and each policy is compared with
//! policy_1 (after iteration 0: the warm-started policy when iteration 0 trains on the warm
//! start alone) and with the zero-shot policy on the same tasks: the paired difference, its
//! interval and a one-sided bootstrap p-value ([`bootstrap`]); a few sentences under it
//! ([`RunReport::reading`]) say what the run can and cannot show: one rate's interval
//! width for that many tasks, and whether the last policy's change is distinguishable
//! from chance.
//!
//! Architecture invariant: reads nothing but the metrics it is handed and writes only into
//! the folder it is given; it never looks at rollouts, models or configs.

pub mod bootstrap;
pub mod scaling;
pub mod svg;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use serde_json::{json, Value};
use swegym_schema::parquet_io::write_parquet;
use swegym_schema::{AtK, ExitReason, IterationMetrics, SchemaError, SplitMetrics, Submitter, TaskOutcome};

use crate::svg::{LinePlot, Series};

/// Everything known about a run, in policy order.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub run: String,
    /// The run config's `[run] about`: what the run is for and what it can and cannot show.
    pub about: Option<String>,
    /// policy_0 (the base model) on the held-out split.
    pub zero_shot: Option<SplitMetrics>,
    /// Finished iterations, in order.
    pub iterations: Vec<IterationMetrics>,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// A text table with a title, printed aligned or as Markdown.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Aligned columns (first column left, the others right), a rule under the header.
    pub fn to_text(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| self.rows.iter().map(|r| r[c].chars().count()).chain([self.headers[c].chars().count()]).max().unwrap_or(0))
            .collect();
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(c, s)| if c == 0 { format!("{s:<w$}", w = widths[c]) } else { format!("{s:>w$}", w = widths[c]) })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let mut out = format!("{}\n{}\n", self.title, line(&self.headers));
        out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }

    pub fn to_markdown(&self) -> String {
        let mut out = format!("### {}\n\n| {} |\n|", self.title, self.headers.join(" | "));
        for c in 0..self.headers.len() {
            out.push_str(if c == 0 { "---|" } else { "---:|" });
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        out
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

/// The label of policy_p: `zero-shot` for the base, `iter p` after p iterations.
pub fn policy_label(p: usize) -> String {
    if p == 0 { "zero-shot".to_string() } else { format!("iter {p}") }
}

/// A held-out rate's 95% bootstrap interval over tasks, from the per-task outcomes.
fn task_interval(m: &SplitMetrics, field: fn(&TaskOutcome) -> f64) -> Option<bootstrap::Interval> {
    let values: Vec<f64> = m.per_task.as_ref()?.values().map(field).collect();
    bootstrap::interval(&values)
}

/// The share of rollouts that ended in a reason without a column of its own.
fn other_exit_rate(m: &SplitMetrics) -> f64 {
    [ExitReason::ContextExceeded, ExitReason::SandboxError, ExitReason::PolicyError].iter().map(|r| m.exit_rate(*r)).sum()
}

impl RunReport {
    /// Held-out metrics per policy index (missing ones skipped).
    pub fn test_by_policy(&self) -> Vec<(usize, &SplitMetrics)> {
        let mut rows = Vec::new();
        if let Some(z) = &self.zero_shot {
            rows.push((0, z));
        }
        for it in &self.iterations {
            rows.push((it.iteration as usize + 1, &it.test));
        }
        rows
    }

    /// The number of policies the report can speak of (zero-shot + one per iteration).
    fn n_policies(&self) -> usize {
        self.iterations.iter().map(|it| it.iteration as usize + 2).max().unwrap_or(1)
    }

    /// The held-out rows' k-rollout metrics, if any row has them (the k of the first).
    fn held_out_k(&self) -> Option<u32> {
        self.test_by_policy().iter().find_map(|(_, m)| m.at_k.as_ref().map(|a| a.k))
    }

    pub fn held_out_table(&self) -> Table {
        let mut headers: Vec<String> =
            ["policy", "rollouts", "resolve %", "empty patch %", "stuck %", "max turns %", "format err %", "other %", "mean turns", "solved"].map(String::from).to_vec();
        let k = self.held_out_k();
        let with_ci = self.test_by_policy().iter().any(|(_, m)| m.per_task.is_some());
        if with_ci {
            headers.extend(["resolve 95% CI".to_string(), "empty 95% CI".to_string()]);
        }
        if let Some(k) = k {
            headers.extend(["pass@1 %".to_string(), format!("pass@{k} %"), format!("best@{k} %"), format!("random@{k} %"), "submitted".into()]);
        }
        let rows = self
            .test_by_policy()
            .into_iter()
            .map(|(p, m)| {
                let mut row = vec![
                    policy_label(p),
                    m.rollouts.to_string(),
                    pct(m.resolve_rate),
                    pct(m.empty_patch_rate),
                    pct(m.exit_rate(ExitReason::StuckInLoop)),
                    pct(m.exit_rate(ExitReason::MaxTurns)),
                    pct(m.exit_rate(ExitReason::FormatError)),
                    pct(other_exit_rate(m)),
                    format!("{:.1}", m.mean_turns),
                    format!("{}/{}", m.unique_resolved, m.instances),
                ];
                if with_ci {
                    let ci = |f: fn(&TaskOutcome) -> f64| match task_interval(m, f) {
                        Some(i) => format!("{:.1}–{:.1}", 100.0 * i.lo, 100.0 * i.hi),
                        None => "-".into(),
                    };
                    row.extend([ci(|t| t.resolved), ci(|t| t.empty_patch)]);
                }
                if k.is_some() {
                    row.extend(at_k_cells(m.at_k.as_ref()));
                }
                row
            })
            .collect();
        let title = match k {
            None => "Held-out split, temperature 0 (policy_p = base + adapter of iteration p-1)".to_string(),
            Some(k) => format!(
                "Held-out split, {k} rollouts per task: rollout 0 at temperature 0, the others sampled; rates over rollouts, pass/best/random over tasks (policy_p = base + adapter of iteration p-1)"
            ),
        };
        Table { title, headers, rows }
    }

    /// Each policy against policy_1 (after iteration 0) and against the zero-shot policy,
    /// on the held-out tasks both were evaluated on; `None` without per-task outcomes.
    pub fn paired_table(&self) -> Option<Table> {
        let rows_in = self.test_by_policy();
        let outcomes = |p: usize| rows_in.iter().find(|(q, _)| *q == p).and_then(|(_, m)| m.per_task.as_ref());
        let mut rows = Vec::new();
        for base in [1usize, 0] {
            let Some(a) = outcomes(base) else { continue };
            for (p, m) in &rows_in {
                let Some(b) = m.per_task.as_ref().filter(|_| *p > base) else { continue };
                let (Some(r), Some(e)) = (bootstrap::paired(a, b, |t| t.resolved), bootstrap::paired(a, b, |t| 1.0 - t.empty_patch)) else { continue };
                rows.push(vec![
                    policy_label(*p),
                    policy_label(base),
                    r.tasks.to_string(),
                    format!("{:+.1} ({:+.1} to {:+.1})", 100.0 * r.diff.mean, 100.0 * r.diff.lo, 100.0 * r.diff.hi),
                    format!("{:.4}", r.p),
                    format!("{} / {}", r.b_only, r.a_only),
                    // (+ 0.0: no "-0.0" for an unchanged rate)
                    format!("{:+.1} ({:+.1} to {:+.1})", -100.0 * e.diff.mean + 0.0, -100.0 * e.diff.hi + 0.0, -100.0 * e.diff.lo + 0.0),
                    format!("{:.4}", e.p),
                ]);
            }
        }
        (!rows.is_empty()).then(|| Table {
            title: format!(
                "Paired comparison on the same held-out tasks (bootstrap over tasks, {} resamples; p: one-sided, that the policy is not better)",
                bootstrap::RESAMPLES
            ),
            headers: ["policy", "against", "tasks", "Δ resolve pts (95% CI)", "p", "solved only by it / only by the other", "Δ empty patch pts (95% CI)", "p"]
                .map(String::from)
                .to_vec(),
            rows,
        })
    }

    /// What the held-out numbers can and cannot show, in words: how wide one rate's
    /// interval is for this many tasks, and whether the last policy's change against
    /// policy_1 and against the zero-shot policy is distinguishable from chance (paired,
    /// one-sided p < 0.05). `None` without per-task outcomes.
    pub fn reading(&self) -> Option<String> {
        let rows = self.test_by_policy();
        let &(last_p, last) = rows.last()?;
        let n = last.per_task.as_ref()?.len();
        let ci = task_interval(last, |t| t.resolved)?;
        let mut lines = vec![format!(
            "- {n} held-out tasks: the 95% interval of {}'s resolve rate is {:.1}–{:.1}% ({:.1} points wide); one policy's rate alone cannot place it more precisely.",
            policy_label(last_p),
            100.0 * ci.lo,
            100.0 * ci.hi,
            100.0 * (ci.hi - ci.lo)
        )];
        for base in [1usize, 0] {
            let Some(a) = rows.iter().find(|(q, _)| *q == base && base < last_p).and_then(|(_, m)| m.per_task.as_ref()) else { continue };
            let Some(r) = bootstrap::paired(a, last.per_task.as_ref()?, |t| t.resolved) else { continue };
            let verdict = if r.p < 0.05 {
                "distinguishable from chance (p < 0.05)".to_string()
            } else {
                format!("not distinguishable from chance (p ≥ 0.05): this run cannot say that {} resolves more than {}", policy_label(last_p), policy_label(base))
            };
            lines.push(format!(
                "- {} against {}: {:+.1} resolve points on the same {} tasks ({} solved only by it, {} only by the other), p = {:.4}: {verdict}.",
                policy_label(last_p),
                policy_label(base),
                100.0 * r.diff.mean,
                r.tasks,
                r.b_only,
                r.a_only,
                r.p
            ));
        }
        Some(format!("### What these numbers can show\n\n{}\n", lines.join("\n")))
    }

    pub fn training_table(&self) -> Table {
        let headers =
            ["iter", "sampled by", "rollouts", "resolve %", "empty patch %", "stuck %", "max turns %", "solved", "always/sometimes/never", "kept (cum.)", "steps", "loss first→last", "tokens"];
        let rows = self
            .iterations
            .iter()
            .map(|it| {
                let m = &it.train;
                let t = &it.training;
                let loss = match (t.loss_first, t.loss_last) {
                    (Some(a), Some(b)) => format!("{a:.3}→{b:.3}"),
                    _ => t.skipped_reason.as_deref().map_or("-".to_string(), |r| format!("skipped: {r}")),
                };
                vec![
                    it.iteration.to_string(),
                    m.policy.clone(),
                    m.rollouts.to_string(),
                    pct(m.resolve_rate),
                    pct(m.empty_patch_rate),
                    pct(m.exit_rate(ExitReason::StuckInLoop)),
                    pct(m.exit_rate(ExitReason::MaxTurns)),
                    format!("{}/{}", m.unique_resolved, m.instances),
                    m.task_mix.map_or("-".to_string(), |x| format!("{}/{}/{}", x.always, x.sometimes, x.never)),
                    format!("{} ({})", it.kept, it.kept_cumulative),
                    t.steps.to_string(),
                    loss,
                    t.tokens.to_string(),
                ]
            })
            .collect();
        Table { title: "Training split (sampled by policy_i), filter and LoRA training per iteration".into(), headers: headers.map(String::from).to_vec(), rows }
    }

    pub fn filter_table(&self) -> Table {
        let reasons: Vec<String> =
            self.iterations.first().map(|it| it.filter.dropped.keys().cloned().collect()).unwrap_or_default();
        let mut headers = vec!["iter".to_string(), "input".into(), "warm start".into(), "kept".into()];
        headers.extend(reasons.iter().cloned());
        let rows = self
            .iterations
            .iter()
            .map(|it| {
                let warm = it.warm_start.as_ref().map_or(0, |w| w.rollouts) + it.warm_start_records;
                let mut row = vec![it.iteration.to_string(), it.filter.input.to_string(), warm.to_string(), it.kept.to_string()];
                row.extend(reasons.iter().map(|r| it.filter.dropped.get(r).copied().unwrap_or(0).to_string()));
                row
            })
            .collect();
        Table { title: "Rejection filter: drops by reason".into(), headers, rows }
    }

    pub fn timing_table(&self) -> Table {
        let stages = ["warm_start", "sample", "filter", "export", "train", "eval"];
        let mut headers = vec!["iter".to_string()];
        headers.extend(stages.iter().map(|s| format!("{s} s")));
        headers.push("total s".into());
        let rows = self
            .iterations
            .iter()
            .map(|it| {
                let mut row = vec![it.iteration.to_string()];
                row.extend(stages.iter().map(|s| it.stage_seconds.get(*s).map_or("-".to_string(), |v| format!("{v:.0}"))));
                row.push(format!("{:.0}", it.stage_seconds.values().sum::<f64>()));
                row
            })
            .collect();
        Table { title: "Wall time per stage".into(), headers, rows }
    }

    /// The tables shown in the terminal (the first two; report.md has all), then the
    /// held-out rates as bars.
    pub fn terminal(&self) -> String {
        let paired = self.paired_table().map(|t| format!("{}\n", t.to_text())).unwrap_or_default();
        let reading = self.reading().map(|r| format!("{}\n", r.trim_start_matches("### "))).unwrap_or_default();
        let about = self.about.as_ref().map(|a| format!("About this run: {a}\n\n")).unwrap_or_default();
        format!("{about}{}\n{paired}{reading}{}\n{}", self.held_out_table().to_text(), self.training_table().to_text(), self.bars())
    }

    /// Held-out resolve and empty-patch rates per policy as text bars (the plots, in the
    /// terminal).
    pub fn bars(&self) -> String {
        const WIDTH: f64 = 40.0;
        let rows = self.test_by_policy();
        let mut out = String::new();
        for (title, f) in [("resolve rate", (|m: &SplitMetrics| m.resolve_rate) as fn(&SplitMetrics) -> f64), ("empty-patch rate", |m| m.empty_patch_rate)] {
            out.push_str(&format!("Held-out {title}\n"));
            for (p, m) in &rows {
                let v = f(m).clamp(0.0, 1.0);
                let n = (v * WIDTH).round() as usize;
                out.push_str(&format!("  {:<10} {}{} {:>5.1}%\n", policy_label(*p), "█".repeat(n), "·".repeat(WIDTH as usize - n), 100.0 * v));
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut md = format!("# RFT run `{}`\n\n", self.run);
        if let Some(about) = &self.about {
            md.push_str(&format!("## About this run\n\n{about}\n\n"));
        }
        md.push_str("Rates are percentages of rollouts. Resolve: the patch makes every FAIL_TO_PASS and PASS_TO_PASS test pass. Empty patch: the patch changes no non-test file. Solved: distinct tasks with at least one resolved rollout.\n\n");
        md.push_str("![resolve rate per iteration](resolve_rate.svg)\n![empty-patch rate per iteration](empty_patch_rate.svg)\n\n");
        for t in [Some(self.held_out_table()), self.paired_table(), Some(self.training_table()), Some(self.filter_table()), Some(self.timing_table())].into_iter().flatten() {
            md.push_str(&t.to_markdown());
            md.push('\n');
            if t.title.starts_with("Paired comparison") {
                if let Some(reading) = self.reading() {
                    md.push_str(&reading);
                    md.push('\n');
                }
            }
        }
        md
    }

    /// `resolve_rate.svg` and `empty_patch_rate.svg`: per policy, one line per split.
    pub fn plots(&self) -> Vec<(&'static str, LinePlot)> {
        let n = self.n_policies();
        let x_labels: Vec<String> = (0..n).map(policy_label).collect();
        let series = |f: fn(&SplitMetrics) -> f64| {
            let mut test = vec![None; n];
            for (p, m) in self.test_by_policy() {
                test[p] = Some(100.0 * f(m));
            }
            let mut train = vec![None; n];
            for it in &self.iterations {
                train[it.iteration as usize] = Some(100.0 * f(&it.train));
            }
            vec![
                Series { name: "held-out (t=0)".into(), color: "#1f77b4", dashed: false, values: test },
                Series { name: "train (sampling)".into(), color: "#ff7f0e", dashed: true, values: train },
            ]
        };
        let plot = |title: &str, f: fn(&SplitMetrics) -> f64| LinePlot {
            title: format!("{title} — {}", self.run),
            x_title: "policy (after N RFT iterations)".into(),
            y_title: format!("{title} (%)"),
            y_cap: Some(100.0),
            x_labels: x_labels.clone(),
            series: series(f),
        };
        vec![
            ("resolve_rate.svg", plot("Resolve rate", |m| m.resolve_rate)),
            ("empty_patch_rate.svg", plot("Empty-patch rate", |m| m.empty_patch_rate)),
        ]
    }

    /// The held-out series' 95% bootstrap intervals (in %) for the plot `name` (the first
    /// series; the train series has none).
    pub fn plot_intervals(&self, name: &str) -> Vec<Vec<Option<(f64, f64)>>> {
        let field: fn(&TaskOutcome) -> f64 = if name.starts_with("empty") { |t| t.empty_patch } else { |t| t.resolved };
        let mut test = vec![None; self.n_policies()];
        for (p, m) in self.test_by_policy() {
            test[p] = task_interval(m, field).map(|i| (100.0 * i.lo, 100.0 * i.hi));
        }
        vec![test]
    }

    /// One row per (policy, split): the split metrics, plus the iteration's filter and
    /// training results on `train` rows.
    pub fn metrics_rows(&self) -> Vec<Value> {
        let mut rows = Vec::new();
        for (p, m) in self.test_by_policy() {
            rows.push(split_row(&self.run, p, m, None));
        }
        for it in &self.iterations {
            rows.push(split_row(&self.run, it.iteration as usize, &it.train, Some(it)));
        }
        rows.sort_by_key(|r| (r["iteration"].as_u64(), r["split"].as_str().map(str::to_string)));
        rows
    }
}

/// Pass@1, Pass@k, Best@k, Random@k (percent; `-` when unknown) and the submitted one.
fn at_k_cells(a: Option<&AtK>) -> Vec<String> {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), pct);
    match a {
        None => vec!["-".to_string(); 5],
        Some(a) => vec![
            pct(a.pass_at_1),
            pct(a.pass_at_k),
            opt(a.best_at_k),
            opt(a.random_at_k),
            match a.submitted_by {
                Submitter::RolloutZero => "rollout 0".to_string(),
                Submitter::Verifier => format!("best@{}", a.k),
            },
        ],
    }
}

fn split_row(run: &str, p: usize, m: &SplitMetrics, it: Option<&IterationMetrics>) -> Value {
    let mut row = json!({
        "run": run,
        "iteration": p,
        "split": m.split,
        "policy": m.policy,
        "rollouts": m.rollouts,
        "instances": m.instances,
        "resolved": m.resolved,
        "resolve_rate": m.resolve_rate,
        "unique_resolved": m.unique_resolved,
        "empty_patch": m.empty_patch,
        "empty_patch_rate": m.empty_patch_rate,
        "mean_turns": m.mean_turns,
        "prompt_tokens": m.prompt_tokens,
        "completion_tokens": m.completion_tokens,
        "wall_s": m.wall_s,
    });
    for reason in ExitReason::ALL {
        row[format!("{}_rate", reason.as_str())] = json!(m.exit_rate(reason));
    }
    if let Some(a) = &m.at_k {
        row["k"] = json!(a.k);
        row["pass_at_1"] = json!(a.pass_at_1);
        row["pass_at_k"] = json!(a.pass_at_k);
        row["best_at_k"] = json!(a.best_at_k);
        row["random_at_k"] = json!(a.random_at_k);
        row["submitted_by"] = json!(a.submitted_by);
        row["submitted_resolve_rate"] = json!(a.submitted_resolve_rate);
    }
    if let Some(it) = it {
        row["kept"] = json!(it.kept);
        row["kept_cumulative"] = json!(it.kept_cumulative);
        row["trained"] = json!(it.training.trained);
        row["train_steps"] = json!(it.training.steps);
        row["train_tokens"] = json!(it.training.tokens);
        row["train_loss_first"] = json!(it.training.loss_first);
        row["train_loss_last"] = json!(it.training.loss_last);
        row["iteration_wall_s"] = json!(it.stage_seconds.values().sum::<f64>());
    }
    row
}

/// The Arrow schema of `metrics.parquet`.
pub fn metrics_schema() -> Arc<Schema> {
    let f = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
    let mut fields = vec![
        f("run", DataType::Utf8, false),
        f("iteration", DataType::UInt32, false),
        f("split", DataType::Utf8, false),
        f("policy", DataType::Utf8, false),
        f("rollouts", DataType::UInt64, false),
        f("instances", DataType::UInt64, false),
        f("resolved", DataType::UInt64, false),
        f("resolve_rate", DataType::Float64, false),
        f("unique_resolved", DataType::UInt64, false),
        f("empty_patch", DataType::UInt64, false),
        f("empty_patch_rate", DataType::Float64, false),
    ];
    for reason in ExitReason::ALL {
        fields.push(f(&format!("{}_rate", reason.as_str()), DataType::Float64, false));
    }
    fields.extend([
        f("mean_turns", DataType::Float64, false),
        f("prompt_tokens", DataType::UInt64, false),
        f("completion_tokens", DataType::UInt64, false),
        f("wall_s", DataType::Float64, false),
        // held-out rows with k > 1 rollouts per task (null otherwise)
        f("k", DataType::UInt32, true),
        f("pass_at_1", DataType::Float64, true),
        f("pass_at_k", DataType::Float64, true),
        f("best_at_k", DataType::Float64, true),
        f("random_at_k", DataType::Float64, true),
        f("submitted_by", DataType::Utf8, true),
        f("submitted_resolve_rate", DataType::Float64, true),
        f("kept", DataType::UInt64, true),
        f("kept_cumulative", DataType::UInt64, true),
        f("trained", DataType::Boolean, true),
        f("train_steps", DataType::UInt64, true),
        f("train_tokens", DataType::UInt64, true),
        f("train_loss_first", DataType::Float64, true),
        f("train_loss_last", DataType::Float64, true),
        f("iteration_wall_s", DataType::Float64, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// Writes `report.md`, `metrics.parquet`, `resolve_rate.svg` and `empty_patch_rate.svg`
/// into `dir` (each atomically); returns their paths.
pub fn write_report(dir: &Path, report: &RunReport) -> Result<Vec<PathBuf>, ReportError> {
    let mut written = Vec::new();
    let mut write = |name: &str, text: String| -> Result<(), ReportError> {
        written.push(write_text(dir, name, &text)?);
        Ok(())
    };
    write("report.md", report.markdown())?;
    for (name, plot) in report.plots() {
        let intervals = report.plot_intervals(name);
        write(name, svg::render_with_intervals(&plot, &intervals))?;
    }
    let path = dir.join("metrics.parquet");
    write_parquet(&path, metrics_schema(), &report.metrics_rows())?;
    written.push(path);
    Ok(written)
}

/// Writes `dir/name` atomically (a temporary file renamed into place); returns its path.
pub(crate) fn write_text(dir: &Path, name: &str, text: &str) -> Result<PathBuf, ReportError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |source| ReportError::Io { path: path.clone(), source };
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use swegym_schema::{FilterCounts, TrainMetrics};

    fn split(split: &str, policy: &str, rr: f64, ep: f64) -> SplitMetrics {
        let n = 10u64;
        let mut exit_reasons: BTreeMap<String, u64> = ExitReason::ALL.iter().map(|r| (r.as_str().to_string(), 0)).collect();
        exit_reasons.insert("submitted".into(), 6);
        exit_reasons.insert("stuck_in_loop".into(), 3);
        exit_reasons.insert("sandbox_error".into(), 1);
        SplitMetrics {
            split: split.into(),
            policy: policy.into(),
            rollouts: n,
            instances: 5,
            resolved: (rr * n as f64) as u64,
            resolve_rate: rr,
            unique_resolved: 2,
            empty_patch: (ep * n as f64) as u64,
            empty_patch_rate: ep,
            ungraded: 0,
            exit_reasons,
            mean_turns: 4.5,
            prompt_tokens: 1000,
            completion_tokens: 100,
            wall_s: 12.0,
            at_k: None,
            task_mix: None,
            per_task: (split == "test").then(|| {
                (0..n).map(|i| (format!("t{i}"), TaskOutcome { resolved: f64::from(u8::from((i as f64) < rr * n as f64)), empty_patch: f64::from(u8::from((i as f64) < ep * n as f64)) })).collect()
            }),
        }
    }

    #[test]
    fn intervals_and_the_paired_comparison() {
        let r = report();
        let held = r.held_out_table();
        let ci = held.headers.iter().position(|h| h == "resolve 95% CI").unwrap();
        assert!(held.rows.iter().all(|row| row[ci].contains('–')), "{:?}", held.rows);
        let paired = r.paired_table().expect("per-task outcomes give a paired table");
        assert!(paired.rows.iter().any(|row| row[1] == "iter 1") && paired.rows.iter().any(|row| row[1] == "zero-shot"), "{:?}", paired.rows);
        assert!(r.markdown().contains("Paired comparison on the same held-out tasks"));
        let reading = r.reading().expect("per-task outcomes give a reading");
        assert!(reading.contains("held-out tasks: the 95% interval of iter "), "{reading}");
        assert!(reading.contains("against iter 1:") && reading.contains("against zero-shot:"), "{reading}");
        assert!(reading.contains("distinguishable from chance"), "{reading}");
        assert!(r.markdown().contains("### What these numbers can show") && r.terminal().contains("What these numbers can show"));
        let intervals = r.plot_intervals("resolve_rate.svg");
        assert!(intervals[0].iter().flatten().all(|(lo, hi)| lo <= hi), "{intervals:?}");
        // Metrics from before per-task outcomes: no interval columns, no paired table.
        let mut old = r.clone();
        old.zero_shot.as_mut().unwrap().per_task = None;
        for it in &mut old.iterations {
            it.test.per_task = None;
        }
        assert!(old.paired_table().is_none() && old.reading().is_none());
        assert!(!old.held_out_table().headers.iter().any(|h| h.contains("CI")));
    }

    fn report() -> RunReport {
        let iteration = |i: u32, trained: bool| IterationMetrics {
            iteration: i,
            train: split("train", if i == 0 { "base" } else { "base+adapter-000" }, 0.2, 0.5),
            warm_start: None,
            warm_start_records: 0,
            filter: FilterCounts { input: 10, kept: 2, dropped: BTreeMap::from([("not_resolved".into(), 8), ("too_long".into(), 0)]) },
            kept: 2,
            kept_cumulative: 2 * (i as u64 + 1),
            training: TrainMetrics {
                trained,
                skipped_reason: (!trained).then(|| "no trajectory kept".to_string()),
                steps: if trained { 4 } else { 0 },
                loss_first: trained.then_some(1.25),
                loss_last: trained.then_some(0.5),
                ..TrainMetrics::default()
            },
            test: split("test", "x", 0.3 + 0.1 * i as f64, 0.4),
            stage_seconds: BTreeMap::from([("sample".into(), 10.0), ("train".into(), 5.0)]),
        };
        RunReport { run: "demo".into(), about: None, zero_shot: Some(split("test", "base", 0.1, 0.6)), iterations: vec![iteration(0, true), iteration(1, false)] }
    }

    #[test]
    fn tables_read_by_policy() {
        let r = report();
        let held = r.held_out_table();
        assert_eq!(held.rows.iter().map(|row| row[0].as_str()).collect::<Vec<_>>(), ["zero-shot", "iter 1", "iter 2"]);
        assert_eq!(held.rows[0][2..5], ["10.0", "60.0", "30.0"]);
        assert_eq!(held.rows[0][7], "10.0", "sandbox errors count as other");
        let train = r.training_table();
        assert_eq!(train.rows[0][11], "1.250→0.500");
        assert_eq!(train.rows[1][11], "skipped: no trajectory kept");
        assert_eq!(train.rows[1][9], "2 (4)");
        assert_eq!(train.rows[1][8], "-", "no task mix in these metrics");
        let text = r.terminal();
        assert!(text.contains("zero-shot") && text.contains("loss first→last"), "{text}");
        let bar = |full: usize, pct: &str| format!("{}{} {pct}", "█".repeat(full), "·".repeat(40 - full));
        assert!(text.contains(&format!("Held-out empty-patch rate\n  zero-shot  {}\n", bar(24, " 60.0%"))), "{text}");
        assert!(text.contains(&format!("  iter 2     {}\n", bar(16, " 40.0%"))), "{text}");
        let md = r.markdown();
        assert!(md.contains("| policy | rollouts | resolve % |") && md.contains("![resolve rate per iteration](resolve_rate.svg)"));
        assert!(r.filter_table().headers.contains(&"not_resolved".to_string()));
        assert!(!md.contains("About this run"), "no [run] about, no section");
        let about = RunReport { about: Some("A demo: it can show X, not Y.".into()), ..report() };
        let md = about.markdown();
        assert!(md.starts_with("# RFT run `demo`\n\n## About this run\n\nA demo: it can show X, not Y.\n\n"), "{md}");
        assert!(about.terminal().starts_with("About this run: A demo: it can show X, not Y.\n"));
    }

    #[test]
    fn plots_and_rows_cover_every_policy() {
        let r = report();
        let plots = r.plots();
        assert_eq!(plots[0].1.x_labels, ["zero-shot", "iter 1", "iter 2"]);
        assert_eq!(plots[0].1.series[0].values, vec![Some(10.0), Some(30.0), Some(40.0)]);
        assert_eq!(plots[0].1.series[1].values, vec![Some(20.0), Some(20.0), None]);
        let rows = r.metrics_rows();
        assert_eq!(rows.len(), 5);
        assert_eq!((rows[0]["iteration"].as_u64(), rows[0]["split"].as_str()), (Some(0), Some("test")));
        assert_eq!((rows[1]["iteration"].as_u64(), rows[1]["split"].as_str()), (Some(0), Some("train")));
        assert_eq!(rows[1]["kept"], 2);
        let dir = tempfile::tempdir().unwrap();
        let files = write_report(dir.path(), &r).unwrap();
        assert_eq!(files.len(), 4);
        let back = swegym_schema::parquet_io::read_parquet_json(&dir.path().join("metrics.parquet")).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back[1]["train_loss_last"], 0.5);
        assert_eq!(back[0]["stuck_in_loop_rate"], 0.3);
        assert_eq!(back[0]["pass_at_k"], Value::Null, "k-rollout columns are null without k > 1");
    }

    #[test]
    fn k_rollout_columns_when_the_held_out_split_has_them() {
        let mut r = report();
        assert!(!r.held_out_table().headers.contains(&"pass@1 %".to_string()), "no columns for runs without them");
        let at_k = AtK {
            k: 4,
            instances: 5,
            pass_at_1: 0.2,
            pass_at_k: 0.6,
            best_at_k: Some(0.4),
            random_at_k: Some(0.25),
            submitted_by: Submitter::Verifier,
            submitted_resolve_rate: 0.4,
        };
        r.iterations[0].test.at_k = Some(at_k.clone());
        r.zero_shot.as_mut().unwrap().at_k = Some(AtK { best_at_k: None, random_at_k: None, submitted_by: Submitter::RolloutZero, submitted_resolve_rate: 0.2, ..at_k });
        let held = r.held_out_table();
        // (columns 10 and 11: the bootstrap intervals)
        assert_eq!(held.headers[12..], ["pass@1 %", "pass@4 %", "best@4 %", "random@4 %", "submitted"]);
        assert_eq!(held.rows[0][12..], ["20.0", "60.0", "-", "-", "rollout 0"]);
        assert_eq!(held.rows[1][12..], ["20.0", "60.0", "40.0", "25.0", "best@4"]);
        assert_eq!(held.rows[2][12..], ["-", "-", "-", "-", "-"]);
        assert!(r.markdown().contains("| pass@1 % | pass@4 % | best@4 % | random@4 % | submitted |"));
        let dir = tempfile::tempdir().unwrap();
        write_report(dir.path(), &r).unwrap();
        let back = swegym_schema::parquet_io::read_parquet_json(&dir.path().join("metrics.parquet")).unwrap();
        let row = back.iter().find(|row| row["iteration"] == 1 && row["split"] == "test").unwrap();
        assert_eq!((row["k"].as_u64(), row["best_at_k"].as_f64(), row["submitted_by"].as_str()), (Some(4), Some(0.4), Some("verifier")));
        assert_eq!(back[0]["best_at_k"], Value::Null);
        assert_eq!(back[0]["pass_at_1"], 0.2);
    }
}
