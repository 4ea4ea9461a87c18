//! OpenAI-style JSON messages to [`Message`].

use super::{Content, ContentPart, Message, RenderError, Role, ToolCall};
use crate::pyjson::PyValue;

fn opt_str(v: Option<&PyValue>, field: &str) -> Result<Option<String>, RenderError> {
    match v {
        None | Some(PyValue::Null) => Ok(None),
        Some(PyValue::Str(s)) => Ok(Some(s.clone())),
        Some(other) => Err(RenderError::Type(format!(
            "{field} must be a string, got {}",
            other.dumps()
        ))),
    }
}

fn content(v: Option<&PyValue>) -> Result<Option<Content>, RenderError> {
    match v {
        None | Some(PyValue::Null) => Ok(None),
        Some(PyValue::Str(s)) => Ok(Some(Content::Text(s.clone()))),
        Some(PyValue::Array(parts)) => {
            let parts = parts
                .iter()
                .map(|p| match p {
                    PyValue::Object(_) => Ok(ContentPart {
                        kind: p.get("type").filter(|t| !t.is_null()).map(PyValue::py_str),
                        text: p.get("text").and_then(PyValue::as_str).map(str::to_owned),
                    }),
                    other => Err(RenderError::Attribute(format!(
                        "'{}' object has no attribute 'get'",
                        py_type_name(other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(Content::Parts(parts)))
        }
        Some(other) => Err(RenderError::Type(format!(
            "unsupported content {}",
            other.dumps()
        ))),
    }
}

pub(super) fn py_type_name(v: &PyValue) -> &'static str {
    match v {
        PyValue::Null => "NoneType",
        PyValue::Bool(_) => "bool",
        PyValue::Int(_) => "int",
        PyValue::Float(_) => "float",
        PyValue::Str(_) => "str",
        PyValue::Array(_) => "list",
        PyValue::Object(_) => "dict",
    }
}

fn tool_call(v: &PyValue) -> Result<ToolCall, RenderError> {
    let f = v
        .get("function")
        .ok_or_else(|| RenderError::Key("'function'".into()))?;
    let non_empty = |x: Option<&PyValue>| {
        x.and_then(PyValue::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let id = non_empty(v.get("id")).or_else(|| non_empty(f.get("id")));
    let name = f
        .get("name")
        .ok_or_else(|| RenderError::Key("'name'".into()))?
        .py_str();
    let arguments = match f
        .get("arguments")
        .ok_or_else(|| RenderError::Key("'arguments'".into()))?
    {
        PyValue::Str(s) => s.clone(),
        other => other.dumps_compact(),
    };
    Ok(ToolCall {
        id,
        name,
        arguments,
    })
}

pub(super) fn message_from_json(v: &PyValue) -> Result<Message, RenderError> {
    if !matches!(v, PyValue::Object(_)) {
        return Err(RenderError::Attribute(format!(
            "'{}' object has no attribute 'get'",
            py_type_name(v)
        )));
    }
    let role = match v.get("role") {
        Some(PyValue::Str(s)) => Role::parse(s),
        None => Role::Other("None".into()),
        Some(other) => Role::Other(other.py_str()),
    };
    let tool_calls = match v.get("tool_calls") {
        None | Some(PyValue::Null) => Vec::new(),
        Some(PyValue::Array(calls)) => calls.iter().map(tool_call).collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(RenderError::Type(format!(
                "tool_calls must be a list, got {}",
                other.dumps()
            )))
        }
    };
    let tools = match v.get("tools") {
        None | Some(PyValue::Null) => None,
        Some(PyValue::Array(t)) => Some(t.clone()),
        Some(other) => {
            return Err(RenderError::Type(format!(
                "tools must be a list, got {}",
                other.dumps()
            )))
        }
    };
    let mut content = content(v.get("content"))?;
    // `merge_tool_messages` reads `msg.get("content", "")`: a missing tool content is empty,
    // an explicit null prints as `None`.
    if role == Role::Tool && v.get("content").is_none() {
        content = Some(Content::Text(String::new()));
    }
    Ok(Message {
        role,
        content,
        reasoning_content: opt_str(v.get("reasoning_content"), "reasoning_content")?,
        tool_calls,
        tool_call_id: opt_str(v.get("tool_call_id"), "tool_call_id")?,
        tools,
        response_format: v.get("response_format").filter(|r| !r.is_null()).cloned(),
        task: v.get("task").filter(|t| !t.is_null()).map(PyValue::py_str),
        wo_eos: v.get("wo_eos").is_some_and(PyValue::truthy),
        raw_dsml: opt_str(v.get("raw_dsml"), "raw_dsml")?,
    })
}
