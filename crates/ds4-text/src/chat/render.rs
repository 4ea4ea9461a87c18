//! `encode_messages` (official encoder), step by step.

use rustc_hash::FxHashMap;

use super::convert::py_type_name;
use super::{
    ChatRequest, Content, Message, ReasoningEffort, RenderError, RenderOptions, RenderedPrompt,
    Role, ThinkingMode,
};
use crate::pyjson::PyValue;
use crate::tokenizer::{ASSISTANT, BOS, EOS, THINK_END, THINK_START, USER};

/// Prepended at message 0 in thinking mode with `reasoning_effort = max` (SERVING.md §2.3).
pub const MAX_EFFORT_PREFIX: &str = "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n\
You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\n\
Explicitly write out your entire deliberation process, documenting every intermediate step, considered alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

/// The official tools block up to the schema lines.
pub const TOOLS_BLOCK_HEAD: &str = "## Tools\n\n\
You have access to a set of tools to help answer the user's question. You can invoke tools by writing a \"<｜DSML｜tool_calls>\" block like the following:\n\n\
<｜DSML｜tool_calls>\n\
<｜DSML｜invoke name=\"$TOOL_NAME\">\n\
<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter>\n\
...\n\
</｜DSML｜invoke>\n\
<｜DSML｜invoke name=\"$TOOL_NAME2\">\n\
...\n\
</｜DSML｜invoke>\n\
</｜DSML｜tool_calls>\n\n\
String parameters should be specified as is and set `string=\"true\"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\n\
If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside <think>...</think> BEFORE any tool calls or final response.\n\n\
Otherwise, output directly after </think> with tool calls or final response.\n\n\
### Available Tool Schemas\n\n";

/// The official tools block after the schema lines.
pub const TOOLS_BLOCK_TAIL: &str = "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";

const RESPONSE_FORMAT_HEAD: &str =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

pub const LATEST_REMINDER: &str = "<｜latest_reminder｜>";

const TASKS: [(&str, &str); 6] = [
    ("action", "<｜action｜>"),
    ("query", "<｜query｜>"),
    ("authority", "<｜authority｜>"),
    ("domain", "<｜domain｜>"),
    ("title", "<｜title｜>"),
    ("read_url", "<｜read_url｜>"),
];

static USER_ROLE: Role = Role::User;

#[derive(Debug, Clone)]
enum Block<'a> {
    Text(Option<&'a Content>),
    ToolResult {
        id: &'a str,
        content: Option<&'a Content>,
    },
}

/// A message after `merge_tool_messages`.
#[derive(Debug, Clone)]
struct Item<'a> {
    role: &'a Role,
    /// The source message (the first user message of a merged user turn; `None` for a user turn
    /// created by a tool result).
    msg: Option<&'a Message>,
    blocks: Vec<Block<'a>>,
    task: Option<&'a str>,
    reasoning: Option<&'a str>,
}

impl<'a> Item<'a> {
    fn content(&self) -> Option<&'a Content> {
        self.msg.and_then(|m| m.content.as_ref())
    }

    fn tool_calls(&self) -> &'a [super::ToolCall] {
        self.msg.map_or(&[], |m| &m.tool_calls)
    }

    /// `tools` survive merging only on non-user messages.
    fn tools(&self) -> Option<&'a [PyValue]> {
        if *self.role == Role::User {
            return None;
        }
        self.msg
            .and_then(|m| m.tools.as_deref())
            .filter(|t| !t.is_empty())
    }
}

fn merge(messages: &[Message]) -> Vec<Item<'_>> {
    let mut merged: Vec<Item<'_>> = Vec::with_capacity(messages.len());
    for msg in messages {
        match msg.role {
            Role::Tool => {
                let block = Block::ToolResult {
                    id: msg.tool_call_id.as_deref().unwrap_or(""),
                    content: msg.content.as_ref(),
                };
                match merged.last_mut() {
                    Some(last) if *last.role == Role::User => last.blocks.push(block),
                    _ => merged.push(Item {
                        role: &USER_ROLE,
                        msg: None,
                        blocks: vec![block],
                        task: None,
                        reasoning: None,
                    }),
                }
            }
            Role::User => {
                let block = Block::Text(msg.content.as_ref());
                match merged.last_mut() {
                    Some(last) if *last.role == Role::User && last.task.is_none() => {
                        last.blocks.push(block)
                    }
                    _ => merged.push(Item {
                        role: &USER_ROLE,
                        msg: Some(msg),
                        blocks: vec![block],
                        task: msg.task.as_deref(),
                        reasoning: None,
                    }),
                }
            }
            _ => merged.push(Item {
                role: &msg.role,
                msg: Some(msg),
                blocks: Vec::new(),
                task: msg.task.as_deref(),
                reasoning: msg.reasoning_content.as_deref(),
            }),
        }
    }
    merged
}

type CallOrder<'a> = FxHashMap<&'a str, usize>;

fn call_order(calls: &[super::ToolCall]) -> CallOrder<'_> {
    let mut order = FxHashMap::default();
    for (i, tc) in calls.iter().enumerate() {
        if let Some(id) = tc.id.as_deref().filter(|s| !s.is_empty()) {
            order.insert(id, i);
        }
    }
    order
}

/// `sort_tool_results_by_call_order`, starting from the order left by earlier messages.
fn sort_tool_results<'a>(items: &mut [Item<'a>], mut order: CallOrder<'a>) {
    for item in items.iter_mut() {
        if *item.role == Role::Assistant && !item.tool_calls().is_empty() {
            order = call_order(item.tool_calls());
        } else if *item.role == Role::User && !item.blocks.is_empty() {
            let slots: Vec<usize> = (0..item.blocks.len())
                .filter(|&i| matches!(item.blocks[i], Block::ToolResult { .. }))
                .collect();
            if slots.len() > 1 && !order.is_empty() {
                let mut results: Vec<Block<'a>> =
                    slots.iter().map(|&i| item.blocks[i].clone()).collect();
                // Stable, like Python's `sorted`; unknown ids sort as 0.
                results.sort_by_key(|b| match b {
                    Block::ToolResult { id, .. } => order.get(id).copied().unwrap_or(0),
                    Block::Text(_) => 0,
                });
                for (slot, b) in slots.into_iter().zip(results) {
                    item.blocks[slot] = b;
                }
            }
        }
    }
}

fn last_user_index(items: &[Item<'_>]) -> Option<usize> {
    items
        .iter()
        .rposition(|m| matches!(m.role, Role::User | Role::Developer))
}

fn drop_thinking<'a>(items: &[Item<'a>]) -> Vec<Item<'a>> {
    let last = last_user_index(items);
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let keep_role = match m.role {
            Role::User | Role::System | Role::Tool | Role::LatestReminder => true,
            Role::Other(r) => r == "direct_search_results",
            _ => false,
        };
        if keep_role || last.is_none_or(|l| i >= l) {
            out.push(m.clone());
        } else if *m.role == Role::Assistant {
            let mut m = m.clone();
            m.reasoning = None;
            out.push(m);
        }
        // Developer (and unknown) messages before the last user turn are dropped.
    }
    out
}

struct Ctx<'r> {
    thinking: bool,
    drop_thinking: bool,
    effort: Option<ReasoningEffort>,
    out: &'r mut RenderedPrompt,
}

/// Renders a request exactly like the official `encode_messages`.
pub fn render(req: &ChatRequest) -> Result<RenderedPrompt, RenderError> {
    let opts: &RenderOptions = &req.options;
    // The harness attaches request tools to messages[0] (when the list is non-empty).
    let with_tools;
    let messages: &[Message] = match (&req.tools, req.messages.first()) {
        (Some(t), Some(_)) if !t.is_empty() => {
            let mut v = req.messages.clone();
            v[0].tools = Some(t.clone());
            with_tools = v;
            &with_tools
        }
        _ => &req.messages,
    };

    let mut msgs = merge(messages);
    // The messages are sorted after the *raw* context: its assistant tool calls set the order.
    let mut initial = CallOrder::default();
    for m in &req.context {
        if m.role == Role::Assistant && !m.tool_calls.is_empty() {
            initial = call_order(&m.tool_calls);
        }
    }
    sort_tool_results(&mut msgs, initial);
    let mut context = merge(&req.context);
    sort_tool_results(&mut context, CallOrder::default());

    let mut out = RenderedPrompt::new();
    if opts.add_default_bos_token && context.is_empty() {
        out.push_template(BOS);
    }
    let n_msgs = msgs.len();
    let n_ctx = context.len();
    let mut full = context;
    full.extend(msgs);

    let any_tools = full.iter().any(|m| m.tools().is_some());
    let effective_drop = opts.drop_thinking && !any_tools;
    let thinking = opts.thinking_mode == ThinkingMode::Thinking;
    let (full, n_render, ctx_len) = if thinking && effective_drop {
        let dropped = drop_thinking(&full);
        let ctx_dropped = drop_thinking(&full[..n_ctx]).len();
        // Python's `range()` of a negative count is empty.
        let n = dropped.len().saturating_sub(ctx_dropped);
        let c = dropped.len() - n;
        (dropped, n, c)
    } else {
        (full, n_msgs, n_ctx)
    };

    let mut ctx = Ctx {
        thinking,
        drop_thinking: effective_drop,
        effort: opts.effective_reasoning_effort(),
        out: &mut out,
    };
    for idx in 0..n_render {
        render_message(idx + ctx_len, &full, &mut ctx)?;
    }
    Ok(out)
}

fn function_objects(tools: &[PyValue]) -> Result<Vec<&PyValue>, RenderError> {
    tools
        .iter()
        .map(|t| match t {
            PyValue::Object(_) => t
                .get("function")
                .ok_or_else(|| RenderError::Key("'function'".into())),
            other => Err(RenderError::Type(format!(
                "{} indices must be integers or slices, not str",
                py_type_name(other)
            ))),
        })
        .collect()
}

fn push_tools(out: &mut RenderedPrompt, functions: &[&PyValue]) {
    out.push_template("\n\n");
    out.push_template(TOOLS_BLOCK_HEAD);
    for (i, f) in functions.iter().enumerate() {
        if i > 0 {
            out.push_template("\n");
        }
        out.push_untrusted(&f.dumps());
    }
    out.push_template(TOOLS_BLOCK_TAIL);
}

fn push_response_format(out: &mut RenderedPrompt, rf: Option<&PyValue>) {
    if let Some(rf) = rf.filter(|r| r.truthy()) {
        out.push_template("\n\n");
        out.push_template(RESPONSE_FORMAT_HEAD);
        out.push_untrusted(&rf.dumps());
    }
}

fn content_text(c: Option<&Content>, none: &str) -> String {
    match c {
        None => none.to_owned(),
        Some(c) => c.flatten().into_owned(),
    }
}

fn render_message(index: usize, items: &[Item<'_>], ctx: &mut Ctx<'_>) -> Result<(), RenderError> {
    let last_user = last_user_index(items);
    let item = &items[index];
    // `tools_from_openai_format` runs for any role before dispatch.
    let functions = match item.tools() {
        Some(t) => Some(function_objects(t)?),
        None => None,
    };
    let response_format = item.msg.and_then(|m| m.response_format.as_ref());
    if index == 0 && ctx.thinking && ctx.effort == Some(ReasoningEffort::Max) {
        ctx.out.push_template(MAX_EFFORT_PREFIX);
    }
    match item.role {
        Role::System => {
            ctx.out.push_untrusted(&content_text(item.content(), ""));
            if let Some(f) = &functions {
                push_tools(ctx.out, f);
            }
            push_response_format(ctx.out, response_format);
        }
        Role::Developer => {
            let content = content_text(item.content(), "");
            if content.is_empty() && !matches!(item.content(), Some(Content::Parts(p)) if !p.is_empty()) {
                return Err(RenderError::Assertion(
                    "Invalid message for role `developer`".into(),
                ));
            }
            ctx.out.push_template(USER);
            ctx.out.push_untrusted(&content);
            if let Some(f) = &functions {
                push_tools(ctx.out, f);
            }
            push_response_format(ctx.out, response_format);
        }
        Role::User => {
            ctx.out.push_template(USER);
            for (i, block) in item.blocks.iter().enumerate() {
                if i > 0 {
                    ctx.out.push_template("\n\n");
                }
                match block {
                    Block::Text(c) => ctx.out.push_untrusted(&content_text(*c, "")),
                    Block::ToolResult { content, .. } => {
                        ctx.out.push_template("<tool_result>");
                        ctx.out.push_untrusted(&content_text(*content, "None"));
                        ctx.out.push_template("</tool_result>");
                    }
                }
            }
        }
        Role::LatestReminder => {
            ctx.out.push_template(LATEST_REMINDER);
            ctx.out.push_untrusted(&content_text(item.content(), "None"));
        }
        Role::Tool => {
            return Err(RenderError::NotImplemented(
                "deepseek_v4 merges tool messages into user; please preprocess with merge_tool_messages()".into(),
            ))
        }
        Role::Assistant => render_assistant(index, items, last_user, ctx)?,
        Role::Other(r) => return Err(RenderError::NotImplemented(format!("Unknown role: {r}"))),
    }

    if let Some(next) = items.get(index + 1) {
        if !matches!(next.role, Role::Assistant | Role::LatestReminder) {
            return Ok(());
        }
    }
    if let Some(task) = item.task {
        let Some(&(_, token)) = TASKS.iter().find(|(t, _)| *t == task) else {
            return Err(RenderError::Assertion(format!(
                "Invalid task: '{task}'. Valid tasks are: {:?}",
                TASKS.map(|(t, _)| t)
            )));
        };
        if task != "action" {
            ctx.out.push_template(token);
        } else {
            ctx.out.push_template(ASSISTANT);
            ctx.out
                .push_template(if ctx.thinking { THINK_START } else { THINK_END });
            ctx.out.push_template(token);
        }
    } else if matches!(item.role, Role::User | Role::Developer) {
        ctx.out.push_template(ASSISTANT);
        let open = ctx.thinking && (!ctx.drop_thinking || last_user.is_some_and(|l| index >= l));
        ctx.out
            .push_template(if open { THINK_START } else { THINK_END });
    }
    Ok(())
}

fn render_assistant(
    index: usize,
    items: &[Item<'_>],
    last_user: Option<usize>,
    ctx: &mut Ctx<'_>,
) -> Result<(), RenderError> {
    let item = &items[index];
    let msg = item.msg.expect("assistant items keep their message");
    // Built first: its errors come before anything is rendered.
    let mut calls = RenderedPrompt::new();
    if let Some(raw) = &msg.raw_dsml {
        calls.push_template(raw);
    } else if !msg.tool_calls.is_empty() {
        calls.push_template("\n\n<｜DSML｜tool_calls>\n");
        for (i, tc) in msg.tool_calls.iter().enumerate() {
            if i > 0 {
                calls.push_template("\n");
            }
            render_invoke(&mut calls, &tc.name, &tc.arguments)?;
        }
        calls.push_template("\n</｜DSML｜tool_calls>");
    }
    let prev_has_task = index > 0 && items[index - 1].task.is_some();
    if ctx.thinking && !prev_has_task && (!ctx.drop_thinking || last_user.is_none_or(|l| index > l))
    {
        ctx.out.push_untrusted(item.reasoning.unwrap_or(""));
        ctx.out.push_template(THINK_END);
    }
    ctx.out.push_untrusted(&content_text(item.content(), ""));
    ctx.out.append(&calls);
    if !msg.wo_eos {
        ctx.out.push_template(EOS);
    }
    Ok(())
}

/// One official invoke: `json.loads` the arguments, re-dump every non-string value.
pub(crate) fn render_invoke(
    out: &mut RenderedPrompt,
    name: &str,
    arguments: &str,
) -> Result<(), RenderError> {
    let parsed = PyValue::parse(arguments);
    let fallback;
    let entries: &[(String, PyValue)] = match &parsed {
        Ok(PyValue::Object(entries)) => entries,
        Ok(other) => {
            return Err(RenderError::Attribute(format!(
                "'{}' object has no attribute 'items'",
                py_type_name(other)
            )))
        }
        Err(_) => {
            fallback = [("arguments".to_owned(), PyValue::Str(arguments.to_owned()))];
            &fallback
        }
    };
    out.push_template("<｜DSML｜invoke name=\"");
    out.push_untrusted(name);
    out.push_template("\">\n");
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.push_template("\n");
        }
        out.push_template("<｜DSML｜parameter name=\"");
        out.push_untrusted(k);
        match v {
            PyValue::Str(s) => {
                out.push_template("\" string=\"true\">");
                out.push_untrusted(s);
            }
            other => {
                out.push_template("\" string=\"false\">");
                out.push_untrusted(&other.dumps());
            }
        }
        out.push_template("</｜DSML｜parameter>");
    }
    out.push_template("\n</｜DSML｜invoke>");
    Ok(())
}
