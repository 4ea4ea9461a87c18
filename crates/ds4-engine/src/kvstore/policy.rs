//! When checkpoints are written (SERVING.md §6.4) and which go first when
//! the directory is over its space budget (§6.5, changed for ds4 #444).

/// Hit half-life of the eviction score (ds4: 6 hours).
pub const HIT_HALF_LIFE_SECS: f64 = 21600.0;
/// Decayed hit counts below this count as no hits.
pub const MIN_EFFECTIVE_HITS: f64 = 0.01;

/// The save-moment knobs, with ds4's defaults.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CachePolicy {
    /// Smallest checkpoint saved or loaded (tokens).
    pub min_tokens: usize,
    /// Cold prompts of min..=this length are saved; 0 disables cold saves.
    pub cold_max_tokens: usize,
    /// Continued-save spacing, rounded up to `boundary_align_tokens`; 0 disables.
    pub continued_interval_tokens: usize,
    /// Tokens trimmed off a cold prompt's tail before its boundary save.
    pub boundary_trim_tokens: usize,
    /// Cold/continued boundaries align down to this multiple; 0 disables.
    pub boundary_align_tokens: usize,
    /// Token ids of `<｜User｜>` and `<｜Assistant｜>` for the chat anchor
    /// (the engine has no tokenizer; `None` disables the anchor).
    pub user_token: Option<u32>,
    pub assistant_token: Option<u32>,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            min_tokens: 512,
            cold_max_tokens: 30000,
            continued_interval_tokens: 10000,
            boundary_trim_tokens: 32,
            boundary_align_tokens: 2048,
            user_token: None,
            assistant_token: None,
        }
    }
}

impl CachePolicy {
    /// Cold boundary of a prompt of `n` tokens without an anchor: drop the
    /// trim and align down, unless that falls below the minimum.
    pub fn store_len(&self, n: usize) -> usize {
        if n > self.min_tokens + self.boundary_trim_tokens {
            let mut s = n - self.boundary_trim_tokens;
            if self.boundary_align_tokens > 0 {
                s -= s % self.boundary_align_tokens;
            }
            if s >= self.min_tokens {
                return s;
            }
        }
        n
    }

    /// Index of the last `<｜User｜>` before the first `<｜Assistant｜>`, if
    /// at least `min_tokens`.
    pub fn chat_anchor(&self, prompt: &[u32]) -> Option<usize> {
        let (user, assistant) = (self.user_token?, self.assistant_token?);
        let mut last_user = None;
        for (i, &t) in prompt.iter().enumerate() {
            if t == assistant {
                break;
            }
            if t == user {
                last_user = Some(i);
            }
        }
        last_user.filter(|&i| i >= self.min_tokens)
    }

    /// Where a cold prompt of these tokens is saved, or `None` if cold
    /// saves do not apply to it.
    pub fn cold_boundary(&self, prompt: &[u32]) -> Option<usize> {
        let n = prompt.len();
        if self.cold_max_tokens == 0 || n < self.min_tokens || n > self.cold_max_tokens {
            return None;
        }
        Some(
            self.chat_anchor(prompt)
                .unwrap_or_else(|| self.store_len(n)),
        )
    }

    /// Continued-save spacing (0: off).
    pub fn continued_step(&self) -> usize {
        let step = self.continued_interval_tokens;
        if step == 0 {
            return 0;
        }
        match self.boundary_align_tokens {
            0 => step,
            a => step.div_ceil(a) * a,
        }
    }

    /// Whether a live length of `n` is a continued-save frontier beyond the
    /// last store `last`.
    pub fn is_continued_target(&self, n: usize, last: usize) -> bool {
        let step = self.continued_step();
        step > 0 && n >= self.min_tokens && n.is_multiple_of(step) && n > last
    }

    /// Continued frontiers in `(from, to]` beyond `last`, ascending.
    pub fn continued_targets(&self, from: usize, to: usize, last: usize) -> Vec<usize> {
        let step = self.continued_step();
        if step == 0 {
            return Vec::new();
        }
        let first = (from / step + 1) * step;
        (first..=to)
            .step_by(step)
            .filter(|&n| self.is_continued_target(n, last))
            .collect()
    }
}

/// What the eviction score needs of one file.
#[derive(Clone, Debug, PartialEq)]
pub struct EvictionInput {
    pub tokens: u64,
    pub file_size: u64,
    pub hits: u32,
    pub created: u64,
    pub last_used: u64,
    pub reason: super::SaveReason,
    /// No other file's text extends this one's: it is the newest state of
    /// its conversation, the one that conversation's next request extends.
    pub leaf: bool,
    /// Never evicted before every unprotected file (the file just written
    /// and files that prefix the prompt being served).
    pub protected: bool,
}

/// The eviction score: lowest goes first (SERVING.md §6.5 as changed here).
///
/// ```text
/// score = (h_eff + recency) · tokens / file_size · role
/// h_eff   = hits · 2^(−age / 6 h)   (0 below 0.01, 0 when no time is known)
/// recency = 0.5 + 0.5 · 2^(−age / 6 h)
/// role    = 4  a leaf: no other file's text extends it
///           2  a superseded cold / agent-system anchor (a shared prefix)
///           1  a superseded continued / evict / shutdown / unknown file
/// ```
///
/// ds4 scores `(h_eff + 1) · tokens / size`, which ranks small prefixes
/// lowest, so under a full budget the checkpoint an active conversation
/// will resume from is deleted while big stale one-shot dumps survive
/// (ds4 #444, #176, #174). Here the newest file of each conversation (its
/// leaf) outranks the superseded intermediate frontiers the same
/// conversation has already moved past, and among leaves the recently used
/// outrank the stale. Protected files go last of all.
pub fn eviction_score(e: &EvictionInput, now: u64) -> f64 {
    if e.file_size == 0 {
        return 0.0;
    }
    let used = if e.last_used != 0 {
        e.last_used
    } else {
        e.created
    };
    let decay = if used == 0 {
        0.0
    } else {
        (-(now.saturating_sub(used) as f64) / HIT_HALF_LIFE_SECS).exp2()
    };
    let mut hits = e.hits as f64 * decay;
    if hits < MIN_EFFECTIVE_HITS {
        hits = 0.0;
    }
    let recency = 0.5 + 0.5 * decay;
    let role = if e.leaf {
        4.0
    } else {
        match e.reason {
            super::SaveReason::Cold | super::SaveReason::AgentSystem => 2.0,
            _ => 1.0,
        }
    };
    (hits + recency) * e.tokens as f64 / e.file_size as f64 * role
}

/// File size and the budget it needs: 1 % slack, rounded up (ds4).
pub fn budget_required(file_bytes: u64) -> Option<u64> {
    file_bytes.checked_add(file_bytes.div_ceil(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_len_matches_ds4() {
        let p = CachePolicy::default();
        assert_eq!(p.store_len(11011), 10240);
        assert_eq!(p.store_len(1695), 1695);
        let p2 = CachePolicy {
            boundary_trim_tokens: 0,
            boundary_align_tokens: 1000,
            ..Default::default()
        };
        assert_eq!(p2.store_len(3500), 3000);
        let p3 = CachePolicy {
            boundary_trim_tokens: 0,
            boundary_align_tokens: 0,
            ..Default::default()
        };
        assert_eq!(p3.store_len(3500), 3500);
    }

    #[test]
    fn anchor_and_continued() {
        let p = CachePolicy {
            min_tokens: 2,
            user_token: Some(7),
            assistant_token: Some(8),
            ..Default::default()
        };
        assert_eq!(p.chat_anchor(&[1, 7, 1, 7, 1, 8, 7]), Some(3));
        assert_eq!(p.chat_anchor(&[7, 1, 8]), None);
        let d = CachePolicy::default();
        assert_eq!(d.continued_step(), 10240);
        assert!(!d.is_continued_target(10239, 0));
        assert!(d.is_continued_target(10240, 0));
        assert!(!d.is_continued_target(10240, 10240));
        assert_eq!(d.continued_targets(0, 30720, 10240), vec![20480, 30720]);
        let exact = CachePolicy {
            continued_interval_tokens: 30000,
            boundary_align_tokens: 0,
            ..Default::default()
        };
        assert!(exact.is_continued_target(30000, 0));
    }

    #[test]
    fn budget_slack() {
        assert_eq!(budget_required(1030), Some(1041));
        assert!(budget_required(u64::MAX).is_none());
    }
}
