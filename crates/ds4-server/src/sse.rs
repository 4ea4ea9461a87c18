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

/// Raises the cancel flag when dropped (the client went away).
pub struct CancelGuard(pub Arc<Cancel>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.0.raise();
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
    _guard: CancelGuard,
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
        _guard: CancelGuard(cancel),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let mut out = String::new();
            match tokio::time::timeout(st.keepalive, st.rx.recv()).await {
                Err(_) => {
                    return Some((
                        Ok::<Bytes, std::io::Error>(Bytes::from_static(b": prefill\n\n")),
                        st,
                    ))
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
                    if out.is_empty() && !st.done {
                        continue;
                    }
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
