//! Request parsing, rendering and HTTP behaviour (§5.2-5.6, §3.8, §6.2).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ds4_text::chat::{render, ChatRequest, Message, RenderOptions};
use tower::ServiceExt;

use crate::error::ErrorKind;
use crate::job::{chat_job, Cancel, ChatInput, ClientSampling, Kind, Think};
use crate::json::parse_body;
use crate::options::ServerOptions;
use crate::protocol::{anthropic, chat, responses};
use crate::testutil::{shared, tokenizer};
use crate::worker::{thinking_visible, tokenize_suffix};

fn input(messages: Vec<Message>, tools: Vec<ds4_text::pyjson::PyValue>) -> ChatInput {
    ChatInput {
        kind: Kind::Chat,
        model: "m".into(),
        messages,
        tools,
        tools_enabled: true,
        think: Think::None,
        sampling: ClientSampling::default(),
        max_tokens: None,
        stops: Vec::new(),
        stream: false,
        param: "messages",
        raw: None,
    }
}

fn job_prompt(sh: &crate::state::Shared, i: ChatInput) -> Result<String, crate::error::ApiError> {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    chat_job(sh, i, tx, Cancel::new()).map(|j| j.prompt.text().to_owned())
}

#[test]
fn context_length_uses_prompt_ge_ctx() {
    // §9 item 21: a prompt of `ctx` tokens does not fit, `ctx - 1` does.
    let msgs = vec![Message::user("Hello")];
    let (probe, _q) = shared(ServerOptions::default(), 1000);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let n = chat_job(&probe, input(msgs.clone(), vec![]), tx, Cancel::new())
        .unwrap()
        .tokens
        .len();
    let (at, _q1) = shared(ServerOptions::default(), n);
    let e = job_prompt(&at, input(msgs.clone(), vec![])).unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::ContextLength { n_prompt, n_ctx, .. } if n_prompt == n && n_ctx == n)
    );
    let (above, _q2) = shared(ServerOptions::default(), n + 1);
    assert!(job_prompt(&above, input(msgs, vec![])).is_ok());
}

#[test]
fn model_metadata_clamps_completion_to_context() {
    // §9 item 72.
    let (a, _q) = shared(ServerOptions::default(), 32768);
    assert_eq!(a.max_completion_tokens(), 32768);
    let (b, _q) = shared(
        ServerOptions {
            default_max_tokens: 4096,
            ..ServerOptions::default()
        },
        100_000,
    );
    assert_eq!(b.max_completion_tokens(), 4096);
    let m = crate::json::to_text(&crate::http::model_json(32768, 32768));
    assert!(
        m.starts_with(r#"{"id":"deepseek-v4-flash","object":"model","created":1767225600"#),
        "{m}"
    );
    assert!(m.contains(r#""top_provider":{"context_length":32768,"max_completion_tokens":32768,"is_moderated":false}"#));
}

const SAMPLED: &str = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">ls</｜DSML｜parameter>\n<｜DSML｜parameter name=\"timeout\" string=\"false\">10</｜DSML｜parameter>\n<｜DSML｜parameter name=\"description\" string=\"true\">list</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

fn replay_body() -> ds4_text::pyjson::PyValue {
    parse_body(
        br#"{"messages":[{"role":"user","content":"go"},
        {"role":"assistant","content":"","tool_calls":[{"id":"call_exact","type":"function","function":{"name":"bash","arguments":"{\"description\":\"list\",\"timeout\":10,\"command\":\"ls\"}"}}]},
        {"role":"tool","tool_call_id":"call_exact","content":"/tmp"}],
        "tools":[{"type":"function","function":{"name":"bash","parameters":{"type":"object"}}}]}"#,
    )
    .unwrap()
}

#[test]
fn tool_memory_replays_sampled_dsml() {
    // §9 item 46: the client's swapped JSON renders as the sampled bytes.
    let (sh, _q) = shared(ServerOptions::default(), 100_000);
    sh.remember_tool_calls(&["call_exact".into()], SAMPLED);
    let req = chat::parse(&replay_body(), 100_000, None).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let job = chat_job(&sh, req.input, tx, Cancel::new()).unwrap();
    assert!(job.prompt.text().contains(SAMPLED));
    assert_eq!((job.replay.mem, job.replay.canonical), (1, 0));
    assert!(job.tool_context);
}

#[test]
fn tool_ids_come_back_from_disk_checkpoints_after_a_restart() {
    // §3.8 step 1 / §6.3 flag bit 0: a fresh server (empty memory) finds the
    // sampled block of a replayed call id in a checkpoint's tool-id map.
    use ds4_engine::kvstore::{KvStore, KvStoreOptions, SaveReason, StoreRequest, ToolMapping};
    let dir = tempfile::tempdir().unwrap();
    let text = format!("<prompt>{SAMPLED}<more>");
    KvStore::open(dir.path(), KvStoreOptions::default())
        .unwrap()
        .store(&StoreRequest {
            text: &text,
            payload: &[7u8; 64],
            tokens: 600,
            ctx: 100_000,
            quant_bits: 2,
            reason: SaveReason::Shutdown,
            key_flags: 0,
            tool_map: &[ToolMapping {
                id: "call_exact".into(),
                dsml: SAMPLED.into(),
            }],
            protect: &[],
        })
        .unwrap();
    let opts = |replay: bool| ServerOptions {
        kv_disk: Some(crate::options::KvDiskOptions {
            dir: dir.path().to_path_buf(),
            budget_mb: 64,
            reject_different_quant: false,
            policy: ds4_engine::CachePolicy::default(),
        }),
        exact_dsml_replay: replay,
        ..ServerOptions::default()
    };
    let (sh, _q) = shared(opts(true), 100_000);
    let req = chat::parse(&replay_body(), 100_000, None).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let job = chat_job(&sh, req.input, tx, Cancel::new()).unwrap();
    assert!(job.prompt.text().contains(SAMPLED));
    assert_eq!((job.replay.mem, job.replay.disk), (1, 1));
    // With replay disabled the disk map is not consulted either.
    let (sh, _q) = shared(opts(false), 100_000);
    let req = chat::parse(&replay_body(), 100_000, None).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let job = chat_job(&sh, req.input, tx, Cancel::new()).unwrap();
    assert!(!job.prompt.text().contains(SAMPLED));
    assert_eq!((job.replay.mem, job.replay.disk), (0, 0));
}

#[test]
fn exact_dsml_tool_replay_can_be_disabled() {
    // §9 item 57, and 18: canonical DSML keeps the client's key order.
    let (sh, _q) = shared(
        ServerOptions {
            exact_dsml_replay: false,
            ..ServerOptions::default()
        },
        100_000,
    );
    sh.remember_tool_calls(&["call_exact".into()], SAMPLED);
    let req = chat::parse(&replay_body(), 100_000, None).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let job = chat_job(&sh, req.input, tx, Cancel::new()).unwrap();
    let p = job.prompt.text();
    assert!(!p.contains(SAMPLED));
    assert_eq!((job.replay.canonical, job.replay.missing_ids), (1, 1));
    let d = p.find("name=\"description\"").unwrap();
    let t = p.find("name=\"timeout\"").unwrap();
    let c = p.find("name=\"command\"").unwrap();
    assert!(d < t && t < c);
}

#[test]
fn tool_schema_order_from_openai_tools() {
    // §9 item 10 (and 8 in the official layout: system text, then tools).
    let v = parse_body(br#"{"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"hi"}],
        "tools":[{"type":"function","function":{"name":"edit","parameters":{"type":"object","properties":{"filePath":{"type":"string"},"oldString":{"type":"string"},"newString":{"type":"string"}}}}}]}"#).unwrap();
    let (sh, _q) = shared(ServerOptions::default(), 100_000);
    let p = job_prompt(&sh, chat::parse(&v, 100_000, None).unwrap().input).unwrap();
    let (a, b, c) = (
        p.find("filePath").unwrap(),
        p.find("oldString").unwrap(),
        p.find("newString").unwrap(),
    );
    assert!(a < b && b < c);
    assert!(p.find("You are terse.").unwrap() < p.find("## Tools").unwrap());
    assert!(p.find("## Tools").unwrap() < p.find("<｜User｜>").unwrap());
}

#[test]
fn tool_schema_order_from_anthropic_schema() {
    // §9 item 9.
    let v = parse_body(br#"{"max_tokens":5,"messages":[{"role":"user","content":"hi"}],
        "tools":[{"name":"Bash","description":"run","input_schema":{"type":"object","properties":{"command":{"type":"string"},"description":{"type":"string"}}}}]}"#).unwrap();
    let (sh, _q) = shared(ServerOptions::default(), 100_000);
    let p = job_prompt(&sh, anthropic::parse(&v, 100_000, None).unwrap()).unwrap();
    assert!(p.contains("\"name\": \"Bash\""));
    assert!(p.find("\"command\"").unwrap() < p.find("\"description\": {").unwrap());
}

#[test]
fn anthropic_tool_use_parses_before_role_and_validates_ids() {
    // §9 items 47, 49, 50, 51.
    let v = parse_body(br#"{"max_tokens":5,"system":[{"type":"text","text":"x-anthropic-billing"},{"type":"text","text":"Be brief."}],
      "messages":[{"role":"user","content":"go"},
      {"content":[{"type":"thinking","thinking":"plan","signature":""},{"type":"tool_use","id":"toolu_exact","name":"bash","input":{"command":"ls","description":"d"}}],"role":"assistant"},
      {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_exact","content":"/tmp"}]}]}"#).unwrap();
    let i = anthropic::parse(&v, 100_000, None).unwrap();
    assert_eq!(
        i.messages[0]
            .content
            .as_ref()
            .map(|c| c.flatten().into_owned())
            .as_deref(),
        Some("Be brief.")
    );
    let a = &i.messages[2];
    assert_eq!(a.tool_calls[0].id.as_deref(), Some("toolu_exact"));
    assert_eq!(
        a.tool_calls[0].arguments,
        r#"{"command":"ls","description":"d"}"#
    );
    assert_eq!(a.reasoning_content.as_deref(), Some("plan"));
    assert_eq!(i.messages[3].tool_call_id.as_deref(), Some("toolu_exact"));
    let bad = parse_body(br#"{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_gone","content":"x"}]}]}"#).unwrap();
    let e = anthropic::parse(&bad, 100_000, None).unwrap_err();
    assert!(e
        .message
        .contains("Anthropic continuation state is not available for tool_use_id toolu_gone"));
    // With the replay map the sampled bytes come back.
    let (sh, _q) = shared(ServerOptions::default(), 100_000);
    let block = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">ls</｜DSML｜parameter>\n<｜DSML｜parameter name=\"description\" string=\"true\">d</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    sh.remember_tool_calls(&["toolu_exact".into()], block);
    let p = job_prompt(&sh, i).unwrap();
    assert!(p.contains(block) && p.contains("<tool_result>/tmp</tool_result>"));
}

#[test]
fn responses_input_items_become_messages() {
    // §9 items 16, 54 and the reasoning / developer rules of §5.4.
    let v = parse_body(br#"{"instructions":"Be exact.","input":[
      {"type":"message","role":"developer","content":[{"type":"input_text","text":"Dev rules."}]},
      {"type":"message","role":"user","content":"search"},
      {"type":"reasoning","summary":[{"type":"summary_text","text":"think"}],"encrypted_content":null},
      {"type":"function_call","call_id":"call_1","name":"perplexity_search","namespace":"mcp__perplexity__","arguments":"{\"query\":\"x\"}"},
      {"type":"function_call_output","call_id":"call_1","output":"found"}]}"#).unwrap();
    let r = responses::parse(&v, 100_000, None).unwrap();
    let m = &r.input.messages;
    assert_eq!(
        m[0].content.as_ref().unwrap().flatten(),
        "Be exact.\n\nDev rules."
    );
    assert_eq!(m[2].reasoning_content.as_deref(), Some("think"));
    assert_eq!(
        m[2].tool_calls[0].name,
        "mcp__perplexity__perplexity_search"
    );
    assert_eq!(m[3].tool_call_id.as_deref(), Some("call_1"));
    let (sh, _q) = shared(ServerOptions::default(), 100_000);
    let p = job_prompt(&sh, r.input).unwrap();
    assert!(p.contains("<｜DSML｜invoke name=\"mcp__perplexity__perplexity_search\">"));
    let bad = parse_body(
        br#"{"input":[{"type":"function_call_output","call_id":"call_x","output":"y"}]}"#,
    )
    .unwrap();
    assert!(responses::parse(&bad, 100_000, None)
        .unwrap_err()
        .message
        .contains("call_id call_x"));
    let bad = parse_body(
        br#"{"input":[{"type":"message","role":"user","content":"x","status":"in_progress"}]}"#,
    )
    .unwrap();
    assert!(responses::parse(&bad, 100_000, None).is_err());
    let bad = parse_body(br#"{"input":"x","tool_choice":{"type":"function","name":"f"}}"#).unwrap();
    assert_eq!(
        responses::parse(&bad, 100_000, None).unwrap_err().message,
        "forced tool_choice not supported"
    );
}

#[test]
fn thinking_checkpoint_canonical_matches_future_prompt() {
    // §9 items 62-64, 66: the remembered visible text prefixes the next render.
    let opts = RenderOptions::default();
    let turn1 = ChatRequest {
        messages: vec![Message::user("Hello")],
        options: opts.clone(),
        ..ChatRequest::default()
    };
    let p1 = render(&turn1).unwrap();
    for content in ["Hi there.", ""] {
        let visible = thinking_visible(p1.text(), content).unwrap();
        let mut a = Message::assistant(content);
        a.reasoning_content = Some("secret reasoning".into());
        let turn2 = ChatRequest {
            messages: vec![Message::user("Hello"), a, Message::user("second")],
            options: opts.clone(),
            ..ChatRequest::default()
        };
        let p2 = render(&turn2).unwrap();
        assert!(
            p2.text().starts_with(&visible),
            "{visible:?}\n{:?}",
            p2.text()
        );
        assert!(!p2.text().contains("secret reasoning"));
        // The suffix after the visible text tokenizes as the tail of the full prompt.
        let tok = tokenizer();
        let full = p2.tokenize(tok, ds4_text::EncodeMode::Hf);
        let tail = tokenize_suffix(tok, &p2, visible.len());
        assert!(full.ends_with(&tail));
    }
    let none = ChatRequest {
        messages: vec![Message::user("Hello")],
        options: RenderOptions {
            thinking_mode: ds4_text::chat::ThinkingMode::Chat,
            ..RenderOptions::default()
        },
        ..ChatRequest::default()
    };
    assert!(thinking_visible(render(&none).unwrap().text(), "x").is_none());
}

async fn call(app: axum::Router, req: Request<Body>) -> axum::response::Response {
    app.oneshot(req).await.unwrap()
}

#[tokio::test]
async fn cors_headers_are_opt_in() {
    // §9 items 22, 23.
    let (plain, _q) = shared(ServerOptions::default(), 4096);
    let r = call(
        crate::http::router(Arc::clone(&plain)),
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r
        .headers()
        .keys()
        .all(|k| !k.as_str().starts_with("access-control")));
    let (cors, _q) = shared(
        ServerOptions {
            cors: true,
            ..ServerOptions::default()
        },
        4096,
    );
    let r = call(
        crate::http::router(Arc::clone(&cors)),
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        r.headers()["access-control-allow-methods"],
        "GET, POST, OPTIONS"
    );
    assert_eq!(r.headers()["access-control-allow-headers"], "*");
    let r = call(
        crate::http::router(cors),
        Request::options("/anything").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["content-length"], "0");
    assert!(r.headers().get("content-type").is_none());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn api_key_is_checked_when_set() {
    let (sh, _q) = shared(
        ServerOptions {
            api_key: Some("k1".into()),
            ..ServerOptions::default()
        },
        4096,
    );
    let app = crate::http::router(sh);
    let r = call(
        app.clone(),
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = call(
        app.clone(),
        Request::get("/v1/models")
            .header("authorization", "Bearer k1")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = call(
        app.clone(),
        Request::get("/v1/models")
            .header("x-api-key", "k1")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = call(
        app,
        Request::get("/v1/models")
            .header("x-api-key", "k2")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_requests_answer_in_protocol_shape() {
    let (sh, _q) = shared(ServerOptions::default(), 4096);
    let app = crate::http::router(sh);
    let r = call(
        app.clone(),
        Request::post("/v1/messages").body(Body::from("{")).unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    assert!(b.starts_with(br#"{"type":"error","error":{"type":"invalid_request_error""#));
    let r = call(
        app.clone(),
        Request::get("/v2/x").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = call(
        app,
        Request::post("/v1/chat/completions")
            .body(Body::from(r#"{"messages":[],"top_k":"x"}"#))
            .unwrap(),
    )
    .await;
    let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    assert!(String::from_utf8_lossy(&b).contains("'top_k'"));
}

fn render_job(
    think: Think,
    ctx: usize,
    messages: Vec<Message>,
    tools: Vec<ds4_text::pyjson::PyValue>,
) -> String {
    let (sh, _q) = shared(ServerOptions::default(), ctx);
    let mut i = input(messages, tools);
    i.think = think;
    job_prompt(&sh, i).unwrap()
}

#[test]
fn render_think_modes() {
    // §9 items 4, 5 (official layout: system text first).
    let msgs = vec![Message::system("You are terse."), Message::user("Hello")];
    let max = render_job(Think::Max, 400_000, msgs.clone(), vec![]);
    assert!(max.starts_with("<｜begin▁of▁sentence｜>Reasoning Effort: Absolute maximum"));
    assert!(max.ends_with("You are terse.<｜User｜>Hello<｜Assistant｜><think>"));
    assert!(!max.contains("</think>"));
    let none = render_job(Think::None, 32768, msgs, vec![]);
    assert!(!none.contains("Reasoning Effort"));
    assert!(none.ends_with("<｜User｜>Hello<｜Assistant｜></think>"));
}

#[test]
fn render_reasoning_with_and_without_tools() {
    // §9 items 6, 7, 65.
    let mut a = Message::assistant("first answer");
    a.reasoning_content = Some("old reasoning".into());
    let plain = render_job(
        Think::High,
        32768,
        vec![Message::user("q"), a.clone(), Message::user("second")],
        vec![],
    );
    assert!(!plain.contains("old reasoning"));
    assert!(plain.contains("<｜Assistant｜></think>first answer"));
    assert!(plain.ends_with("<｜User｜>second<｜Assistant｜><think>"));
    let tool = ds4_text::pyjson::PyValue::parse(
        r#"{"type":"function","function":{"name":"bash","parameters":{"type":"object"}}}"#,
    )
    .unwrap();
    let mut call = Message::assistant("");
    call.reasoning_content = Some("I should run bash".into());
    call.tool_calls = vec![ds4_text::chat::ToolCall {
        id: Some("call_1".into()),
        name: "bash".into(),
        arguments: r#"{"command":"pwd"}"#.into(),
    }];
    let with_tools = render_job(
        Think::High,
        32768,
        vec![
            Message::user("where?"),
            call,
            Message::tool("call_1", "/tmp"),
        ],
        vec![tool],
    );
    assert!(with_tools.contains("I should run bash</think>"));
    assert!(with_tools.contains("<tool_result>/tmp</tool_result>"));
}

#[tokio::test]
async fn cors_sse_headers() {
    // §9 item 24: a streaming response carries the SSE and CORS headers.
    let (sh, _q) = shared(
        ServerOptions {
            cors: true,
            ..ServerOptions::default()
        },
        4096,
    );
    let req = Request::post("/v1/chat/completions")
        .body(Body::from(
            r#"{"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        ))
        .unwrap();
    let r = call(crate::http::router(sh), req).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

#[test]
fn tools_visible_matches_a_replay_without_reasoning() {
    // With tools the reasoning stays in the render; a client that does not
    // echo it renders "" there, which the tools-visible binding predicts.
    use crate::worker::tools_visible;
    let tool = ds4_text::pyjson::PyValue::parse(
        r#"{"type":"function","function":{"name":"bash","parameters":{"type":"object"}}}"#,
    )
    .unwrap();
    let p1 = render_job(
        Think::High,
        32768,
        vec![Message::user("where?")],
        vec![tool.clone()],
    );
    let block = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">pwd</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let visible = tools_visible(&p1, "Checking.", Some(block)).unwrap();
    let (sh, _q) = shared(ServerOptions::default(), 32768);
    sh.remember_tool_calls(&["call_9".into()], block);
    let mut a = Message::assistant("Checking.");
    a.tool_calls = vec![ds4_text::chat::ToolCall {
        id: Some("call_9".into()),
        name: "bash".into(),
        arguments: r#"{"command": "pwd"}"#.into(),
    }];
    let mut i = input(
        vec![Message::user("where?"), a, Message::tool("call_9", "/tmp")],
        vec![tool],
    );
    i.think = Think::High;
    let p2 = job_prompt(&sh, i).unwrap();
    assert!(p2.starts_with(&visible), "{visible:?}\n{p2:?}");
    assert!(p2.len() > visible.len());
}
