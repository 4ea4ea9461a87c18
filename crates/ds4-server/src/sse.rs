//! Server-sent events: the response body of a streaming request, driven by
//! the worker's events through a protocol's [`StreamFormat`].
//!
//! Headers go out as soon as the job is queued; until the first event (in
//! the queue, during a long prefill) a `: prefill` comment is written every
//! keepalive interval so agent clients do not time out (§5.11). When the
//! client goes away the body is dropped, which drops the event receiver and
//! raises the job's cancel flag: the worker stops before the next token.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::ApiError;
use crate::job::{Cancel, Event};

/// Raises the cancel flag when dropped before the job finished (the client
/// went away).
pub struct CancelGuard {
    cancel: Arc<Cancel>,
    armed: bool,
}

impl CancelGuard {
    pub fn new(cancel: Arc<Cancel>) -> Self {
        Self {
            cancel,
            armed: true,
        }
    }

    /// The job finished: dropping no longer cancels.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.cancel.raise();
        }
    }
}

/// A protocol's SSE framing of worker events.
pub trait StreamFormat: Send + 'static {
    /// Appends the SSE text for one event.
    fn event(&mut self, ev: Event, out: &mut String);
    /// The stream failed before it could finish normally.
    fn error(&mut self, e: &ApiError, out: &mut String);
}

/// `data: <json>\n\n`.
pub fn data(out: &mut String, json: &str) {
    out.push_str("data: ");
    out.push_str(json);
    out.push_str("\n\n");
}

/// `event: <name>\ndata: <json>\n\n`.
pub fn named(out: &mut String, name: &str, json: &str) {
    out.push_str("event: ");
    out.push_str(name);
    out.push('\n');
    data(out, json);
}

struct State<F> {
    rx: UnboundedReceiver<Event>,
    fmt: F,
    done: bool,
    keepalive: Duration,
    /// When the last bytes went out: a comment is due `keepalive` later,
    /// whatever silent events (prefill progress) arrived meanwhile.
    last_write: tokio::time::Instant,
    guard: CancelGuard,
}

fn is_final(ev: &Event) -> bool {
    matches!(ev, Event::Done(_) | Event::Failed(_))
}

/// The SSE response for a queued job.
pub fn response<F: StreamFormat>(
    rx: UnboundedReceiver<Event>,
    fmt: F,
    cancel: Arc<Cancel>,
    keepalive: Duration,
) -> Response {
    let state = State {
        rx,
        fmt,
        done: false,
        keepalive,
        last_write: tokio::time::Instant::now(),
        guard: CancelGuard::new(cancel),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let mut out = String::new();
            let due = st.last_write + st.keepalive;
            match tokio::time::timeout_at(due, st.rx.recv()).await {
                Err(_) => {
                    st.last_write = tokio::time::Instant::now();
                    return Some((
                        Ok::<Bytes, std::io::Error>(Bytes::from_static(b": prefill\n\n")),
                        st,
                    ));
                }
                Ok(None) => {
                    st.done = true;
                    st.fmt
                        .error(&ApiError::server("the inference worker stopped"), &mut out);
                    return Some((Ok(Bytes::from(out)), st));
                }
                Ok(Some(ev)) => {
                    st.done = is_final(&ev);
                    st.fmt.event(ev, &mut out);
                    // Coalesce what is already waiting into one write.
                    while !st.done {
                        match st.rx.try_recv() {
                            Ok(ev) => {
                                st.done = is_final(&ev);
                                st.fmt.event(ev, &mut out);
                            }
                            Err(_) => break,
                        }
                    }
                    if st.done {
                        st.guard.disarm();
                    }
                    if out.is_empty() && !st.done {
                        continue;
                    }
                    st.last_write = tokio::time::Instant::now();
                    return Some((Ok(Bytes::from(out)), st));
                }
            }
        }
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{FinishReason, TurnResult, Usage};
    use crate::protocol::chat::ChatStream;
    use crate::protocol::Meta;
    use futures_util::StreamExt;

    fn done() -> Event {
        Event::Done(Box::new(TurnResult {
            finish: FinishReason::Stop,
            error: None,
            recovered: false,
            reasoning: None,
            thinking_closed: false,
            content: String::new(),
            calls: Vec::new(),
            streamed_calls: 0,
            closed_calls: 0,
            usage: Usage::default(),
            text: String::new(),
            raw_dsml: None,
            stop_sequence: false,
        }))
    }

    #[tokio::test]
    async fn keepalive_comments_until_the_first_event_and_cancel_on_drop() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = Cancel::new();
        let meta = Meta::new("chatcmpl-1".into(), "m");
        let r = response(
            rx,
            ChatStream::new(meta, false),
            Arc::clone(&cancel),
            Duration::from_millis(20),
        );
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        assert_eq!(r.headers()["cache-control"], "no-cache");
        let mut body = r.into_body().into_data_stream();
        // Prefill progress alone writes nothing, and does not delay the comment.
        tx.send(Event::Progress { done: 1, total: 9 }).unwrap();
        let first = body.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b": prefill\n\n");
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(8)).await;
            tx.send(Event::Progress { done: 2, total: 9 }).unwrap();
        }
        let second = body.next().await.unwrap().unwrap();
        assert_eq!(&second[..], b": prefill\n\n");
        tx.send(Event::Started(Usage::default())).unwrap();
        tx.send(done()).unwrap();
        let mut rest = Vec::new();
        while let Some(chunk) = body.next().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
        let rest = String::from_utf8(rest).unwrap();
        assert!(rest.contains("\"role\":\"assistant\""), "{rest}");
        assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
        drop(body);
        assert!(!cancel.is_raised(), "a finished stream does not cancel");
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let cancel = Cancel::new();
        let r = response(
            rx,
            ChatStream::new(Meta::new("x".into(), "m"), false),
            Arc::clone(&cancel),
            Duration::from_secs(5),
        );
        drop(r);
        assert!(
            cancel.is_raised(),
            "dropping an unfinished body cancels the job"
        );
    }
}
