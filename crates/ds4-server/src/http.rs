//! Routes, the API-key check, CORS, body limits and the model endpoints
//! (SERVING.md §5.2, §5.3).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ds4_text::pyjson::PyValue;

use crate::error::{json_response, ApiError, Protocol};
use crate::json::parse_body;
use crate::obj;
use crate::options::MODEL_ID;
use crate::protocol::{anthropic, chat, completions, responses};
use crate::state::Shared;

type AppState = Arc<Shared>;

/// Fixed `created` of the model object (2026-01-01).
const MODEL_CREATED: u64 = 1_767_225_600;

/// The model object (§5.3), fields in ds4's order.
pub fn model_json(ctx: usize, max_completion: usize) -> PyValue {
    let params: Vec<&str> = vec![
        "tools",
        "tool_choice",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "stop",
        "seed",
        "stream",
        "reasoning_effort",
    ];
    obj! {
        "id" => MODEL_ID,
        "object" => "model",
        "created" => MODEL_CREATED,
        "owned_by" => "ds4",
        "name" => "DeepSeek V4 Flash",
        "context_length" => ctx,
        "top_provider" => obj! {
            "context_length" => ctx,
            "max_completion_tokens" => max_completion,
            "is_moderated" => false,
        },
        "supported_parameters" => params,
    }
}

fn protocol_of(path: &str) -> Protocol {
    if path.starts_with("/v1/messages") {
        Protocol::Anthropic
    } else {
        Protocol::OpenAi
    }
}

fn cors_headers(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("*"),
    );
}

/// Constant-time comparison of two keys.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key a request presents: `Authorization: Bearer K` or `x-api-key: K`.
fn presented_keys(h: &HeaderMap) -> Vec<&[u8]> {
    let mut keys = Vec::new();
    if let Some(v) = h.get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            keys.push(v[7..].trim_ascii());
        }
    }
    if let Some(v) = h.get("x-api-key") {
        keys.push(v.as_bytes().trim_ascii());
    }
    keys
}

/// OPTIONS preflight, API key, CORS headers on every response.
async fn gate(State(shared): State<AppState>, req: Request, next: Next) -> Response {
    let cors = shared.opts.cors;
    let mut resp = if req.method() == Method::OPTIONS {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        r
    } else if let Some(key) = shared.opts.api_key.as_deref() {
        let ok = presented_keys(req.headers())
            .iter()
            .any(|k| same_key(k, key.as_bytes()));
        if ok {
            next.run(req).await
        } else {
            ApiError::auth().response(protocol_of(req.uri().path()))
        }
    } else {
        next.run(req).await
    };
    if cors {
        cors_headers(resp.headers_mut());
    }
    resp
}

async fn list_models(State(shared): State<AppState>) -> Response {
    let m = model_json(shared.ctx, shared.max_completion_tokens());
    json_response(
        StatusCode::OK,
        &obj! { "object" => "list", "data" => vec![m] },
    )
}

async fn get_model(State(shared): State<AppState>, Path(id): Path<String>) -> Response {
    if id == MODEL_ID {
        json_response(
            StatusCode::OK,
            &model_json(shared.ctx, shared.max_completion_tokens()),
        )
    } else {
        ApiError::not_found(format!(
            "unknown model '{id}' (this server has '{MODEL_ID}')"
        ))
        .response(Protocol::OpenAi)
    }
}

async fn stats(State(shared): State<AppState>) -> Response {
    json_response(StatusCode::OK, &shared.stats.to_json())
}

async fn not_found(req: Request) -> Response {
    ApiError::not_found("unknown endpoint").response(protocol_of(req.uri().path()))
}

/// Reads the JSON body of a POST endpoint.
fn body_json(shared: &Shared, body: &Bytes) -> Result<(PyValue, Option<String>), ApiError> {
    shared
        .stats
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if body.len() > shared.opts.max_body_bytes {
        return Err(ApiError::too_large(shared.opts.max_body_bytes));
    }
    let v = parse_body(body)?;
    let raw = shared
        .opts
        .trace
        .is_some()
        .then(|| String::from_utf8_lossy(body).into_owned());
    Ok((v, raw))
}

macro_rules! endpoint {
    ($name:ident, $module:ident, $proto:expr) => {
        async fn $name(
            State(shared): State<AppState>,
            body: Result<Bytes, axum::extract::rejection::BytesRejection>,
        ) -> Response {
            let body = match body {
                Ok(b) => b,
                Err(e) => {
                    let err = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::too_large(shared.opts.max_body_bytes)
                    } else {
                        ApiError::invalid(format!("bad HTTP request: {}", e.body_text()))
                    };
                    return err.response($proto);
                }
            };
            match body_json(&shared, &body) {
                Ok((v, raw)) => $module::handle(shared, v, raw).await,
                Err(e) => e.response($proto),
            }
        }
    };
}

endpoint!(chat_completions, chat, Protocol::OpenAi);
endpoint!(text_completions, completions, Protocol::OpenAi);
endpoint!(responses_api, responses, Protocol::OpenAi);
endpoint!(messages, anthropic, Protocol::Anthropic);

pub fn router(shared: AppState) -> Router {
    let limit = shared.opts.max_body_bytes;
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(text_completions))
        .route("/v1/responses", post(responses_api))
        .route("/v1/messages", post(messages))
        .route("/ds4/stats", get(stats))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), gate))
        .with_state(shared)
}

/// A 405 for a known path with the wrong method reads as unknown endpoint.
pub async fn method_not_allowed() -> impl IntoResponse {
    ApiError::not_found("unknown endpoint").response(Protocol::OpenAi)
}
