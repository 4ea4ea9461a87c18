"""OpenAI Responses API through the official `openai` SDK."""

import json

import openai
import pytest

FLAT_BASH = {
    "type": "function",
    "name": "bash",
    "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}, "timeout": {"type": "integer"}}},
}

NAMESPACE = {
    "type": "namespace",
    "name": "mcp__shell__",
    "description": "shell tools",
    "tools": [{"type": "function", "name": "bash", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}],
}


def test_non_stream_tool_call(oai):
    r = oai.responses.create(model="deepseek-v4-flash", input="SCRIPT:tool-think", tools=[FLAT_BASH])
    assert r.object == "response" and r.status == "completed"
    assert r.id.startswith("resp_")
    kinds = [o.type for o in r.output]
    assert kinds == ["message", "function_call"], kinds
    assert r.output[0].content[0].text == "Let me look."
    fc = r.output[1]
    assert fc.name == "bash" and fc.call_id.startswith("call_") and fc.id.startswith("fc_")
    assert json.loads(fc.arguments) == {"command": 'echo "a&b" && ls -la /tmp 🚀', "timeout": 10}
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_stream_lifecycle(oai):
    events = list(oai.responses.create(
        model="deepseek-v4-flash", input="SCRIPT:tool-think stream", tools=[FLAT_BASH], stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # No reasoning events unless a summary was asked for.
    assert not any(t.startswith("response.reasoning") for t in types)
    i_added = types.index("response.output_item.added")
    assert events[i_added].item.type == "message"
    assert types[i_added + 1] == "response.content_part.added"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Let me look."
    done_text = [e.text for e in events if e.type == "response.output_text.done"]
    assert done_text == ["Let me look."]
    # The function call item: added, arguments delta, done, item done.
    fc_added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    assert len(fc_added) == 1 and fc_added[0].output_index == 1
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"command": 'echo "a&b" && ls -la /tmp 🚀', "timeout": 10}
    (args_done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert args_done.arguments == args
    final = events[-1].response
    assert [o.type for o in final.output] == ["message", "function_call"]
    assert final.output[1].call_id == fc_added[0].item.call_id
    assert final.usage.output_tokens > 0


def test_stream_reasoning_summary_opt_in(oai):
    events = list(oai.responses.create(
        model="deepseek-v4-flash", input="SCRIPT:think", reasoning={"summary": "auto"}, stream=True))
    types = [e.type for e in events]
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == "I should greet the user."
    assert types.index("response.reasoning_summary_text.done") < types.index("response.output_text.done")
    final = events[-1].response
    assert [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == "I should greet the user."
    assert final.output[1].content[0].text == "Hello from thinking."


def test_stream_helper_final_response(oai):
    with oai.responses.stream(model="deepseek-v4-flash", input="SCRIPT:think helper") as s:
        for _ in s:
            pass
        final = s.get_final_response()
    assert final.output_text == "Hello from thinking."


def test_function_call_output_continues(oai):
    r1 = oai.responses.create(model="deepseek-v4-flash", input="SCRIPT:tool-think list", tools=[FLAT_BASH])
    fc = r1.output[-1]
    items = [
        {"type": "message", "role": "developer", "content": "You are an agent."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "SCRIPT:tool-think list"}]},
        {"type": "function_call", "call_id": fc.call_id, "name": fc.name, "arguments": fc.arguments, "id": fc.id, "status": "completed"},
        {"type": "function_call_output", "call_id": fc.call_id, "output": "a b c SCRIPT:after-tool"},
    ]
    r2 = oai.responses.create(model="deepseek-v4-flash", input=items, tools=[FLAT_BASH], store=False,
                              include=["reasoning.encrypted_content"], parallel_tool_calls=True)
    assert r2.output_text == "The directory has 3 files."


def test_namespace_tools_keep_wire_namespace(oai):
    r = oai.responses.create(model="deepseek-v4-flash", input="SCRIPT:tool-think ns", tools=[NAMESPACE])
    # The scripted call is named `bash`, which is not the joined `mcp__shell__bash`.
    fc = r.output[-1]
    assert fc.type == "function_call" and fc.name == "bash"


def test_unknown_call_id_is_rejected(oai):
    items = [{"type": "function_call_output", "call_id": "call_nope", "output": "x"}]
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model="deepseek-v4-flash", input=items)
    assert "Responses continuation state is not available for call_id call_nope" in str(e.value)


@pytest.mark.parametrize("field", ["previous_response_id", "conversation"])
def test_stateful_fields_rejected(oai, field):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model="deepseek-v4-flash", input="hi", extra_body={field: "resp_123"})
    assert "replay full input" in str(e.value)


def test_forced_tool_choice_rejected(oai):
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="deepseek-v4-flash", input="hi", tools=[FLAT_BASH], tool_choice="required")


def test_incomplete_on_max_tokens(oai):
    r = oai.responses.create(model="deepseek-v4-flash", input="SCRIPT:long", max_output_tokens=16,
                             reasoning={"effort": "none"})
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_tokens"
