//! A scripted policy: reply number *n* of every rollout is the *n*-th canned reply. It keeps
//! no state (the index is the number of assistant messages so far), so concurrent rollouts
//! replay independently. Tests drive every exit reason with it.

use std::path::Path;

use swegym_schema::Role;

use super::{Completion, Policy, PolicyError, PolicyRequest};

pub struct ReplayPolicy {
    id: String,
    replies: Vec<String>,
}

impl ReplayPolicy {
    pub fn new(id: impl Into<String>, replies: Vec<String>) -> ReplayPolicy {
        ReplayPolicy { id: id.into(), replies }
    }

    /// Replies from a JSON file holding an array of strings.
    pub fn from_file(path: &Path) -> Result<ReplayPolicy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Unsupported(format!("reading {}: {e}", path.display())))?;
        let replies: Vec<String> = serde_json::from_str(&text)
            .map_err(|e| PolicyError::Unsupported(format!("{}: expected a JSON array of strings: {e}", path.display())))?;
        Ok(ReplayPolicy::new(format!("replay:{}", path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())), replies))
    }
}

#[async_trait::async_trait]
impl Policy for ReplayPolicy {
    fn id(&self) -> String {
        self.id.clone()
    }

    async fn complete(&self, request: PolicyRequest<'_>) -> Result<Completion, PolicyError> {
        let n = request.messages.iter().filter(|m| m.role == Role::Assistant).count();
        let text = self.replies.get(n).cloned().ok_or(PolicyError::Exhausted(n))?;
        let prompt_tokens = self.count_tokens(request.messages) as u64;
        let completion_tokens = text.chars().count().div_ceil(4) as u64;
        Ok(Completion { text, prompt_tokens, completion_tokens })
    }
}
