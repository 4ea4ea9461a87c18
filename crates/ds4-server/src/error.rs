//! API errors and their protocol shapes (SERVING.md §5.10).
//!
//! OpenAI endpoints answer `{"error":{"message":…,"type":…}}`; `/v1/messages`
//! answers Anthropic's `{"type":"error","error":{"type":…,"message":…}}`.
//! (ds4 uses the OpenAI shape for generic errors on `/v1/messages` too; the
//! Anthropic SDK reads both, and its own shape is what it documents.)

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ds4_text::pyjson::PyValue;

use crate::json::{push_field, to_text};
use crate::obj;

/// Which error shape an endpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    OpenAi,
    Anthropic,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    NotFound,
    Authentication,
    /// The rendered prompt does not fit the context.
    ContextLength {
        param: &'static str,
        n_prompt: usize,
        n_ctx: usize,
    },
    Conflict,
    TooLarge,
    Overloaded,
    Server,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl ApiError {
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }

    pub fn auth() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::Authentication,
            "invalid or missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
        )
    }

    pub fn server(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Server,
            message,
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Overloaded,
            message,
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooLarge,
            format!("request body exceeds {limit} bytes"),
        )
    }

    /// `Prompt has N tokens, but the configured context size is C tokens`.
    pub fn context_length(param: &'static str, n_prompt: usize, n_ctx: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::ContextLength {
                param,
                n_prompt,
                n_ctx,
            },
            format!(
                "Prompt has {n_prompt} tokens, but the configured context size is {n_ctx} tokens"
            ),
        )
    }

    fn openai_type(&self) -> &'static str {
        match self.kind {
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::Server => "server_error",
            _ => "invalid_request_error",
        }
    }

    fn anthropic_type(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidRequest | ErrorKind::ContextLength { .. } | ErrorKind::Conflict => {
                "invalid_request_error"
            }
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::TooLarge => "request_too_large",
            ErrorKind::Overloaded => "overloaded_error",
            ErrorKind::Server => "api_error",
        }
    }

    /// The error body in a protocol's shape (no trailing newline).
    pub fn body(&self, proto: Protocol) -> PyValue {
        match proto {
            Protocol::OpenAi => {
                let mut e = obj! { "message" => &self.message, "type" => self.openai_type() };
                match &self.kind {
                    ErrorKind::ContextLength {
                        param,
                        n_prompt,
                        n_ctx,
                    } => {
                        push_field(&mut e, "param", *param);
                        push_field(&mut e, "code", "context_length_exceeded");
                        push_field(&mut e, "n_prompt_tokens", *n_prompt);
                        push_field(&mut e, "n_ctx", *n_ctx);
                    }
                    ErrorKind::Authentication => push_field(&mut e, "code", "invalid_api_key"),
                    _ => {}
                }
                obj! { "error" => e }
            }
            Protocol::Anthropic => {
                let mut e = obj! { "type" => self.anthropic_type(), "message" => &self.message };
                if let ErrorKind::ContextLength {
                    n_prompt, n_ctx, ..
                } = &self.kind
                {
                    push_field(&mut e, "n_prompt_tokens", *n_prompt);
                    push_field(&mut e, "n_ctx", *n_ctx);
                }
                obj! { "type" => "error", "error" => e }
            }
        }
    }

    /// The SSE error event sent when the stream has already started.
    pub fn sse_event(&self, proto: Protocol) -> String {
        match proto {
            Protocol::OpenAi => {
                let e = obj! { "error" => obj! { "message" => &self.message, "type" => "server_error" } };
                format!("event: error\ndata: {}\n\n", to_text(&e))
            }
            Protocol::Anthropic => {
                let e = obj! { "type" => "error", "error" => obj! { "type" => "api_error", "message" => &self.message } };
                format!("event: error\ndata: {}\n\n", to_text(&e))
            }
        }
    }

    pub fn response(&self, proto: Protocol) -> Response {
        json_response(self.status, &self.body(proto))
    }
}

/// A JSON response (body ends with a newline, like ds4's).
pub fn json_response(status: StatusCode, v: &PyValue) -> Response {
    let mut body = to_text(v);
    body.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An error bound to the protocol of the endpoint that raised it.
pub struct Reply(pub ApiError, pub Protocol);

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        self.0.response(self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::to_text;

    #[test]
    fn context_length_error_uses_protocol_standard_shape() {
        // SERVING.md §9 item 21 (the `>=` rule is tested with the request builder).
        let e = ApiError::context_length("messages", 16, 16);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let o = to_text(&e.body(Protocol::OpenAi));
        assert_eq!(
            o,
            r#"{"error":{"message":"Prompt has 16 tokens, but the configured context size is 16 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded","n_prompt_tokens":16,"n_ctx":16}}"#
        );
        let a = to_text(&e.body(Protocol::Anthropic));
        assert!(a.starts_with(r#"{"type":"error","error":{"type":"invalid_request_error","message":"Prompt has 16"#), "{a}");
        assert!(a.contains(r#""n_prompt_tokens":16,"n_ctx":16"#));
    }

    #[test]
    fn auth_and_generic_shapes() {
        let e = ApiError::auth();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert!(to_text(&e.body(Protocol::OpenAi)).contains("\"code\":\"invalid_api_key\""));
        assert!(to_text(&e.body(Protocol::Anthropic)).contains("\"type\":\"authentication_error\""));
        let e = ApiError::invalid("invalid JSON request");
        assert_eq!(
            to_text(&e.body(Protocol::OpenAi)),
            r#"{"error":{"message":"invalid JSON request","type":"invalid_request_error"}}"#
        );
        assert!(e
            .sse_event(Protocol::Anthropic)
            .starts_with("event: error\ndata: {\"type\":\"error\""));
    }
}
