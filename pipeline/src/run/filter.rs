//! The `filter` stage: every rollout of the iteration (the policy's, then the warm start's)
//! with its token count and verifier score, through `swegym_filter`'s rules; one decision
//! row per rollout in `filter.json`.

use std::path::{Path, PathBuf};

use swegym_filter::{Candidate, DecisionRow};
use swegym_lm::chat::ChatMessage;
use swegym_sample::Rollout;
use swegym_schema::rollout::read_rollouts;
use swegym_schema::{FilterCounts, Message};

use super::Runner;
use super::score::read_scores_file;
use crate::run_dir::manifest::FilterDetails;
use crate::run_dir::write_json_atomic;

impl Runner {
    /// Token counts with the policy's tokenizer and chat template (as the trainer renders),
    /// or a 4-characters-per-token estimate when the model has no template.
    pub(super) fn count_tokens(&self, messages: &[Message]) -> usize {
        let counter = self.token_counter.get_or_init(|| {
            let path = &self.cfg.policy.model;
            let tokenizer = if path.is_dir() {
                swegym_lm::Tokenizer::from_file(path.join("tokenizer.json")).ok()
            } else {
                swegym_lm::GgufFile::open(path).ok().and_then(|f| swegym_lm::Tokenizer::from_gguf(&f).ok())
            }?;
            let template = swegym_lm::chat_template_for(path, &tokenizer)?;
            Some((tokenizer, template))
        });
        let estimate = || messages.iter().map(|m| m.content.chars().count().div_ceil(4) + 4).sum();
        match counter {
            Some((tokenizer, template)) => {
                let chat: Vec<ChatMessage> = messages.iter().map(|m| ChatMessage::new(m.role, m.content.clone())).collect();
                template.tokenize(tokenizer, &chat, false).map(|t| t.ids.len()).unwrap_or_else(|_| estimate())
            }
            None => estimate(),
        }
    }

    /// The filter's input: the policy's rollouts, then the warm-start rollouts (if any).
    pub(super) fn filter_input(&self, dir: &Path) -> anyhow::Result<Vec<Rollout>> {
        let mut all = read_rollouts(&dir.join("rollouts.parquet"))?;
        let warm = dir.join("warm_start.parquet");
        if warm.exists() {
            all.extend(read_rollouts(&warm)?);
        }
        Ok(all)
    }

    pub(super) async fn filter_stage(&self, dir: &Path) -> anyhow::Result<(Vec<PathBuf>, FilterDetails)> {
        let all = self.filter_input(dir)?;
        let n_tokens: Vec<usize> = all.iter().map(|r| self.count_tokens(&r.messages)).collect();
        // With select_keep, the score stage's p(YES) per rollout (policy, task, sample).
        let scores: Option<Vec<Option<f64>>> = match &self.cfg.verifier {
            Some(v) if v.select_keep => {
                let rows = read_scores_file(&dir.join("verifier_scores.parquet"))?;
                let by_key: std::collections::HashMap<(&str, &str, u32), f64> =
                    rows.iter().map(|s| ((s.policy_id.as_str(), s.instance_id.as_str(), s.sample_idx), s.p_yes)).collect();
                Some(all.iter().map(|r| by_key.get(&(r.policy_id.as_str(), r.instance_id.as_str(), r.sample_idx)).copied()).collect())
            }
            _ => None,
        };
        let score_of = |j: usize| scores.as_ref().and_then(|s| s[j]);
        let candidates: Vec<Candidate<'_>> =
            all.iter().zip(&n_tokens).enumerate().map(|(j, (rollout, &n))| Candidate { rollout, n_tokens: n, score: score_of(j) }).collect();
        let outcome = swegym_filter::filter(&candidates, &self.cfg.filter);
        let decisions = outcome.rows(&candidates);
        for (reason, n) in outcome.dropped() {
            if n > 0 {
                tracing::info!(reason = reason.as_str(), n, "filter drops");
            }
        }
        let counts = outcome.counts();
        let out = dir.join("filter.json");
        write_json_atomic(&out, &FilterFile { rules: &self.cfg.filter, counts: &counts, decisions: &decisions })?;
        let drops: Vec<String> = counts.dropped.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
        let line = format!("kept {}/{} (dropped: {})", counts.kept, counts.input, if drops.is_empty() { "none".into() } else { drops.join(", ") });
        Ok((vec![out], FilterDetails { line, counts }))
    }
}

/// A run's `filter.json` as written: the rules, the counts and one row per rollout.
#[derive(serde::Serialize)]
pub(super) struct FilterFile<'a> {
    pub(super) rules: &'a swegym_filter::FilterConfig,
    pub(super) counts: &'a FilterCounts,
    pub(super) decisions: &'a [DecisionRow],
}

/// The rows of a run's `filter.json`, as the export stage reads them.
#[derive(serde::Deserialize)]
pub(super) struct FilterFileRows {
    pub(super) decisions: Vec<DecisionRow>,
}
