//! `--trace FILE`: a human-readable block per request (SERVING.md §5.11).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::ids::unix_now;
use crate::job::{Job, TurnResult, Usage};

pub struct Trace {
    file: File,
}

impl Trace {
    /// Creates (truncates) the trace file.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            file: File::create(path)?,
        })
    }

    pub fn request(
        &mut self,
        job: &Job,
        effective: &[u32],
        source: &str,
        usage: &Usage,
        result: &TurnResult,
    ) {
        let mut b = String::new();
        let s = &job.sampling;
        b.push_str(&format!(
            "===== request {} {} =====\nkind: {}\nmodel: {}\nstream: {}\ntools: {}\nthink_mode: {}\n\
             prompt_tokens: {}\neffective_tokens: {}\ncached_tokens: {}\n\
             sampling: temperature={} top_p={} top_k={} min_p={} seed={}\nmax_tokens: {}\n\
             cache decision: source={} tool_replay mem={} disk={} canonical={} missing_ids={}\n",
            job.seq,
            unix_now(),
            job.kind.name(),
            job.model,
            job.stream,
            job.tools,
            job.think.name(),
            job.tokens.len(),
            effective.len(),
            usage.cached,
            s.temperature,
            s.top_p,
            s.top_k,
            s.min_p,
            s.seed,
            job.max_tokens,
            source,
            job.replay.mem,
            job.replay.disk,
            job.replay.canonical,
            job.replay.missing_ids,
        ));
        if let Some(raw) = &job.raw {
            b.push_str("--- request json\n");
            b.push_str(raw);
            b.push('\n');
        }
        b.push_str("--- rendered prompt\n");
        b.push_str(job.prompt.text());
        b.push_str("\n--- generated text\n");
        b.push_str(&result.text);
        b.push_str(&format!(
            "\n--- parsed message\nfinish: {}\nerror: {}\nrecovered: {}\nreasoning: {}\ncontent: {}\n",
            result.finish.openai(),
            result.error.as_deref().unwrap_or("-"),
            result.recovered,
            result.reasoning.as_deref().unwrap_or("-"),
            result.content,
        ));
        for c in &result.calls {
            b.push_str(&format!("tool call {} {} {}\n", c.id, c.name, c.arguments));
        }
        b.push_str(&format!("===== end request {} =====\n\n", job.seq));
        // The trace is a diagnostic: a failed write must not fail the request.
        let _ = self.file.write_all(b.as_bytes());
    }
}
