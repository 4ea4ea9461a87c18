//! The token-level generation loop shared by the CLI and the server: pick a
//! token from the session's logits, hand it to the caller, evaluate it, and
//! stop on a stop token, the token budget, the context limit, cancellation,
//! or the caller's word.
//!
//! Text concerns (detokenizing, stop strings, DSML tool calls, forced greedy
//! sampling inside protocol syntax) stay with the caller, which sees every
//! token through [`TokenSink`] before it is evaluated.

use std::sync::atomic::{AtomicBool, Ordering};

use ds4_model::backend::Backend;

use crate::error::{EngineError, Result};
use crate::sampling::Sampler;
use crate::session::{Engine, Session};

/// What the caller wants after seeing a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Evaluate the token and go on.
    Continue,
    /// Stop now; the token is not evaluated.
    Stop,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// `max_tokens` were generated.
    Length,
    /// A stop token (e.g. end of sentence) was sampled; it is not evaluated.
    StopToken(u32),
    /// The sink returned [`Step::Stop`] (a stop string, a finished tool call, ...).
    Sink,
    /// The cancel flag was raised.
    Cancelled,
    /// The session reached the context size.
    ContextFull,
}

#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// Tokens that end generation when sampled (not evaluated).
    pub stop_tokens: Vec<u32>,
}

/// The caller's side of the loop.
pub trait TokenSink {
    /// The next token from the current logits; the default samples.
    fn choose(&mut self, sampler: &mut Sampler, logits: &[f32]) -> Option<u32> {
        sampler.sample(logits)
    }
    /// Sees every chosen token (stop tokens included) before it is evaluated.
    fn accept(&mut self, token: u32, logits: &[f32]) -> Step;
    /// Whether the session may be checkpointed at this point of the output
    /// (SERVING.md §6.4: not inside a tool-call block); default yes.
    fn checkpoint_ok(&self) -> bool {
        true
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// The tokens accepted and evaluated (the final stop token is not included).
    pub tokens: Vec<u32>,
    pub finish: Finish,
}

/// Generates from the session's current logits until a stop condition.
pub fn generate<B: Backend>(
    engine: &Engine<B>,
    session: &mut Session<B>,
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    cancel: Option<&AtomicBool>,
    sink: &mut dyn TokenSink,
) -> Result<Generated> {
    generate_with(engine, session, sampler, opts, cancel, sink, &mut |_, _| {
        Ok(())
    })
}

/// Called after every evaluated token with the session and the sink.
pub type AfterEval<'a, B> = dyn FnMut(&Session<B>, &dyn TokenSink) -> Result<()> + 'a;

/// [`generate`], calling `after_eval(session, sink)` after every evaluated
/// token (the pool's continued checkpoints).
pub fn generate_with<B: Backend>(
    engine: &Engine<B>,
    session: &mut Session<B>,
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    cancel: Option<&AtomicBool>,
    sink: &mut dyn TokenSink,
    after_eval: &mut AfterEval<'_, B>,
) -> Result<Generated> {
    let ctx = engine.options().ctx;
    let mut tokens = Vec::new();
    let finish = loop {
        if tokens.len() >= opts.max_tokens {
            break Finish::Length;
        }
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            break Finish::Cancelled;
        }
        if session.is_empty() {
            return Err(EngineError::NoLogits);
        }
        let token = sink
            .choose(sampler, session.logits())
            .ok_or(EngineError::NoLogits)?;
        let step = sink.accept(token, session.logits());
        if opts.stop_tokens.contains(&token) {
            break Finish::StopToken(token);
        }
        if step == Step::Stop {
            break Finish::Sink;
        }
        if session.len() >= ctx {
            break Finish::ContextFull;
        }
        engine.eval(session, &[token])?;
        tokens.push(token);
        after_eval(session, sink)?;
    };
    Ok(Generated { tokens, finish })
}

/// A sink from a closure, for callers that only watch tokens.
pub struct FnSink<F: FnMut(u32, &[f32]) -> Step>(pub F);

impl<F: FnMut(u32, &[f32]) -> Step> TokenSink for FnSink<F> {
    fn accept(&mut self, token: u32, logits: &[f32]) -> Step {
        (self.0)(token, logits)
    }
}
