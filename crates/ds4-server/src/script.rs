//! Scripted generation, for end-to-end tests only (feature `test-script`).
//!
//! A random-weight model never writes a tool call or a thinking block on
//! purpose, so the end-to-end suite replaces sampling with scripted text:
//! a JSON file of rules, each naming a marker string and the text to emit
//! when the rendered prompt contains it. The rule whose marker occurs
//! *last* in the prompt wins (so a tool result can carry the marker of the
//! next turn); a prompt without any marker is sampled normally. The text is
//! tokenized with special tokens recognised (`</think>`, `｜DSML｜`, …) and
//! fed to the generation loop token by token in place of sampling; all the
//! rest (detokenizing, DSML tracking, stop sequences, streaming, parsing,
//! KV reuse) runs as for sampled tokens.
//!
//! ```json
//! {"rules": [{"when": "SCRIPT:tool", "text": "…", "eos": true, "repeat": false, "delay_ms": 0}]}
//! ```
//!
//! * `eos` (default true): end with the end-of-sentence token; false: fall
//!   back to sampling after the text.
//! * `repeat`: start the text again at its end (a stream that only
//!   `max_tokens` or a disconnect ends).
//! * `delay_ms`: sleep before each scripted token (slow streams).
//!
//! This module does not exist without the feature, which is off by default
//! and refused at compile time without debug assertions (see `lib.rs`), so
//! no release build can contain it.

use std::path::Path;
use std::time::Duration;

use ds4_text::{EncodeMode, Tokenizer};
use serde_json::Value;

use crate::turn::Forced;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub when: String,
    pub text: String,
    pub eos: bool,
    pub repeat: bool,
    pub delay_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script {
    pub rules: Vec<Rule>,
}

impl Script {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--test-script {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--test-script {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let rules = v
            .get("rules")
            .and_then(Value::as_array)
            .ok_or("expected {\"rules\": [...]}")?;
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_owned);
            let when = s("when").filter(|w| !w.is_empty());
            let (Some(when), Some(text)) = (when, s("text")) else {
                return Err(format!("rules[{i}] needs a non-empty 'when' and a 'text'"));
            };
            out.push(Rule {
                when,
                text,
                eos: r.get("eos").and_then(Value::as_bool).unwrap_or(true),
                repeat: r.get("repeat").and_then(Value::as_bool).unwrap_or(false),
                delay_ms: r.get("delay_ms").and_then(Value::as_u64).unwrap_or(0),
            });
        }
        Ok(Self { rules: out })
    }

    /// The rule whose marker occurs last in the prompt.
    pub fn rule_for(&self, prompt: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .filter_map(|r| prompt.rfind(&r.when).map(|i| (i, r)))
            .max_by_key(|&(i, _)| i)
            .map(|(_, r)| r)
    }

    pub fn cursor_for<'a>(
        &self,
        prompt: &str,
        tok: &Tokenizer,
        eos: u32,
    ) -> Option<Box<dyn Forced + 'a>> {
        let rule = self.rule_for(prompt)?;
        Some(Box::new(Cursor {
            tokens: tok.encode_with(&rule.text, EncodeMode::Hf),
            at: 0,
            eos: rule.eos.then_some(eos),
            repeat: rule.repeat,
            delay: Duration::from_millis(rule.delay_ms),
        }))
    }
}

struct Cursor {
    tokens: Vec<u32>,
    at: usize,
    eos: Option<u32>,
    repeat: bool,
    delay: Duration,
}

impl Forced for Cursor {
    fn next(&mut self) -> Option<u32> {
        if self.at >= self.tokens.len() && self.repeat && !self.tokens.is_empty() {
            self.at = 0;
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        match self.tokens.get(self.at) {
            Some(&t) => {
                self.at += 1;
                Some(t)
            }
            None => self.eos,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_marker_wins() {
        let s = Script::parse(
            r#"{"rules":[{"when":"A:","text":"one"},{"when":"B:","text":"two","eos":false,"repeat":true,"delay_ms":5}]}"#,
        )
        .unwrap();
        assert_eq!(s.rule_for("x A: y B: z").unwrap().text, "two");
        assert_eq!(s.rule_for("x B: y A: z").unwrap().text, "one");
        assert!(s.rule_for("nothing").is_none());
        let b = s.rule_for("B:").unwrap();
        assert!(!b.eos && b.repeat && b.delay_ms == 5);
        assert!(Script::parse(r#"{"rules":[{"when":"","text":"x"}]}"#).is_err());
        assert!(Script::parse("[]").is_err());
    }
}
