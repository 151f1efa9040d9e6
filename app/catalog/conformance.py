"""The ``conformance`` profile: exactly the fixtures the official MCP conformance suite calls.

Served only when asked for (``--catalog conformance``); names, texts and data follow the suite's fixture
contract (the reference everything-server of the MCP Python SDK), so that the suite can judge the protocol.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from typing import Any

import orjson

from app.features import Features
from app.features.prompts import PromptArgument, Prompts, PromptSpec
from app.features.resources import ResourceContents, Resources, ResourceSpec, TemplateSpec
from app.features.tasks import RunAsTask, TaskContext
from app.features.tools import ToolError, ToolResult, Tools, ToolSpec, text_result
from app.jsonrpc import InternalError, MissingClientCapability
from app.protocol.context import RequestContext

__all__ = ["conformance_features"]

IMAGE_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
AUDIO_WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
NO_ARGUMENTS: Mapping[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}

Args = Mapping[str, Any]


def _content(*blocks: dict[str, Any]) -> ToolResult:
    return {"content": list(blocks), "isError": False}


def _image() -> dict[str, Any]:
    return {"type": "image", "data": IMAGE_PNG, "mimeType": "image/png"}


async def simple_text(_: Args, __: RequestContext) -> ToolResult:
    return text_result("This is a simple text response for testing.")


async def image_content(_: Args, __: RequestContext) -> ToolResult:
    return _content(_image())


async def audio_content(_: Args, __: RequestContext) -> ToolResult:
    return _content({"type": "audio", "data": AUDIO_WAV, "mimeType": "audio/wav"})


async def embedded_resource(_: Args, __: RequestContext) -> ToolResult:
    resource = {
        "uri": "test://embedded-resource",
        "mimeType": "text/plain",
        "text": "This is an embedded resource content.",
    }
    return _content({"type": "resource", "resource": resource})


async def multiple_content_types(_: Args, __: RequestContext) -> ToolResult:
    resource = {
        "uri": "test://mixed-content-resource",
        "mimeType": "application/json",
        "text": '{"test": "data", "value": 123}',
    }
    return _content(
        {"type": "text", "text": "Multiple content types test:"}, _image(), {"type": "resource", "resource": resource}
    )


async def tool_with_logging(_: Args, ctx: RequestContext) -> ToolResult:
    for step, text in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
        if step:
            await asyncio.sleep(0.05)
        await ctx.log("info", text)
    return text_result("Tool with logging executed successfully")


async def tool_with_progress(_: Args, ctx: RequestContext) -> ToolResult:
    for step, value in enumerate((0, 50, 100)):
        if step:
            await asyncio.sleep(0.05)
        await ctx.progress(value, 100, f"Completed step {value} of 100")
    token = ctx.progress_token
    return text_result(str(token if token is not None else 0))


async def error_handling(_: Args, __: RequestContext) -> ToolResult:
    raise ToolError("This tool intentionally returns an error for testing")


async def sampling(arguments: Args, ctx: RequestContext) -> ToolResult:
    message = {"role": "user", "content": {"type": "text", "text": arguments["prompt"]}}
    result = await ctx.request(
        "sampling/createMessage", {"messages": [message], "maxTokens": 100}, capability="sampling"
    )
    content = result.get("content")
    text = content.get("text") if isinstance(content, dict) and content.get("type") == "text" else "No response"
    return text_result(f"LLM response: {text}")


async def _elicit(ctx: RequestContext, message: str, schema: Mapping[str, Any]) -> tuple[str, str]:
    result = await ctx.request(
        "elicitation/create", {"message": message, "requestedSchema": dict(schema)}, capability="elicitation"
    )
    action = str(result.get("action"))
    content = result.get("content") if action == "accept" else None
    return action, orjson.dumps(content or {}).decode()


USER_RESPONSE = {
    "type": "object",
    "properties": {"response": {"type": "string", "description": "User's response"}},
    "required": ["response"],
}


async def elicitation(arguments: Args, ctx: RequestContext) -> ToolResult:
    action, content = await _elicit(ctx, arguments["message"], USER_RESPONSE)
    return text_result(f"User response: action={action}, content={content}")


SEP1034_DEFAULTS = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
}


async def elicitation_sep1034_defaults(_: Args, ctx: RequestContext) -> ToolResult:
    action, content = await _elicit(ctx, "Please provide user information", SEP1034_DEFAULTS)
    return text_result(f"Elicitation result: action={action}, content={content}")


SEP1330_ENUMS = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Simple enum without titles",
            "enum": ["active", "inactive", "pending"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Enum with titled options (oneOf)",
            "oneOf": [
                {"const": "low", "title": "Low Priority"},
                {"const": "medium", "title": "Medium Priority"},
                {"const": "high", "title": "High Priority"},
            ],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Multi-select without titles",
            "items": {"type": "string", "enum": ["read", "write", "execute"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Multi-select with titled options",
            "items": {
                "anyOf": [
                    {"const": "feature", "title": "New Feature"},
                    {"const": "bug", "title": "Bug Fix"},
                    {"const": "docs", "title": "Documentation"},
                ]
            },
        },
        "legacyEnum": {
            "type": "string",
            "description": "Legacy enum with enumNames",
            "enum": ["small", "medium", "large"],
            "enumNames": ["Small Size", "Medium Size", "Large Size"],
        },
    },
    "required": ["untitledSingle", "titledSingle", "untitledMulti", "titledMulti", "legacyEnum"],
}


async def elicitation_sep1330_enums(_: Args, ctx: RequestContext) -> ToolResult:
    action, content = await _elicit(ctx, "Please select values using different enum schema types", SEP1330_ENUMS)
    return text_result(f"Elicitation completed: action={action}, content={content}")


JSON_SCHEMA_2020_12: Mapping[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


async def json_schema_tool(_: Args, __: RequestContext) -> ToolResult:
    return text_result("json_schema_2020_12_tool")


async def reconnection(_: Args, ctx: RequestContext) -> ToolResult:
    await ctx.log("info", "Before disconnect")
    await ctx.close_stream()
    await asyncio.sleep(0.2)  # the client reconnects with Last-Event-ID meanwhile
    await ctx.log("info", "After reconnect")
    return text_result("Reconnection test completed")


# -- 2026-07-28 fixtures ----------------------------------------------------------------------------------------


async def missing_capability(_: Args, ctx: RequestContext) -> ToolResult:
    if not ctx.client_supports("sampling"):
        raise MissingClientCapability(
            "This tool requires the client 'sampling' capability", data={"requiredCapabilities": {"sampling": {}}}
        )
    return text_result("Client declared sampling capability; proceeding.")


async def streaming_elicitation(_: Args, ctx: RequestContext) -> ToolResult:
    await ctx.progress(1, 1, "Streaming")
    return text_result("Streaming complete")


async def logging_tool(_: Args, ctx: RequestContext) -> ToolResult:
    await ctx.log("info", "Logging evaluated")  # sent only when the request asked for a log level
    return text_result("Logging evaluated")


X_MCP_HEADER = {
    "type": "object",
    "properties": {
        "region": {
            "type": "string",
            "description": "Mirrored into the Mcp-Param-Region header",
            "x-mcp-header": "Region",
            "default": "<none>",
        }
    },
}


async def x_mcp_header(arguments: Args, _: RequestContext) -> ToolResult:
    return text_result(f"region={arguments.get('region', '<none>')}")


NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
OK_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
COLOR_SCHEMA = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
ROOTS_REQUEST = {"method": "roots/list", "params": {}}


def _input_required(requests: Mapping[str, Any], state: str | None = None) -> ToolResult:
    result: ToolResult = {"resultType": "input_required", "inputRequests": dict(requests)}
    if state is not None:
        result["requestState"] = state
    return result


def _ask(message: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"method": "elicitation/create", "params": {"message": message, "requestedSchema": dict(schema)}}


def _sample(text: str, max_tokens: int) -> dict[str, Any]:
    message = {"role": "user", "content": {"type": "text", "text": text}}
    return {"method": "sampling/createMessage", "params": {"messages": [message], "maxTokens": max_tokens}}


def _answered(ctx: RequestContext, key: str) -> dict[str, Any] | None:
    """An input response, when it is an object (the client's answers are untrusted)."""
    answer = (ctx.input_responses or {}).get(key)
    return answer if isinstance(answer, dict) else None


def _elicited(ctx: RequestContext, key: str, field: str) -> Any:
    answer = _answered(ctx, key)
    if answer is None or answer.get("action") != "accept" or not isinstance(answer.get("content"), dict):
        return None
    return answer["content"].get(field)


def _sampled_text(ctx: RequestContext, key: str) -> str | None:
    content = (_answered(ctx, key) or {}).get("content")
    return content.get("text") if isinstance(content, dict) and isinstance(content.get("text"), str) else None


def _roots(ctx: RequestContext, key: str) -> list[Any] | None:
    roots = (_answered(ctx, key) or {}).get("roots")
    return roots if isinstance(roots, list) else None


async def irr_elicitation(_: Args, ctx: RequestContext) -> ToolResult:
    name = _elicited(ctx, "user_name", "name")
    if isinstance(name, str):
        return text_result(f"Hello, {name}!")
    return _input_required({"user_name": _ask("What is your name?", NAME_SCHEMA)})


async def irr_sampling(_: Args, ctx: RequestContext) -> ToolResult:
    text = _sampled_text(ctx, "capital_question")
    if text is not None:
        return text_result(f"Model said: {text}")
    return _input_required({"capital_question": _sample("What is the capital of France?", 100)})


async def irr_list_roots(_: Args, ctx: RequestContext) -> ToolResult:
    roots = _roots(ctx, "client_roots")
    if roots is not None:
        return text_result(f"Client exposed {len(roots)} root(s).")
    return _input_required({"client_roots": ROOTS_REQUEST})


async def irr_request_state(_: Args, ctx: RequestContext) -> ToolResult:
    if _elicited(ctx, "confirm", "ok") is not None and ctx.request_state == "request-state-nonce":
        return text_result("state-ok: confirmation received")
    return _input_required({"confirm": _ask("Please confirm", OK_SCHEMA)}, "request-state-nonce")


async def irr_multiple_inputs(_: Args, ctx: RequestContext) -> ToolResult:
    if (
        _elicited(ctx, "user_name", "name") is not None
        and _sampled_text(ctx, "greeting") is not None
        and _roots(ctx, "client_roots") is not None
    ):
        return text_result("All inputs received.")
    requests = {
        "user_name": _ask("What is your name?", NAME_SCHEMA),
        "greeting": _sample("Generate a greeting", 50),
        "client_roots": ROOTS_REQUEST,
    }
    return _input_required(requests, "multiple-inputs")


async def irr_multi_round(_: Args, ctx: RequestContext) -> ToolResult:
    state = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
    if state.get("round") == 1 and isinstance(name := _elicited(ctx, "step1", "name"), str):
        step2 = _ask("Step 2: What is your favorite color?", COLOR_SCHEMA)
        return _input_required({"step2": step2}, json.dumps({"round": 2, "name": name}))
    if state.get("round") == 2 and isinstance(color := _elicited(ctx, "step2", "color"), str):
        return text_result(f"{state.get('name')} likes {color}.")
    return _input_required({"step1": _ask("Step 1: What is your name?", NAME_SCHEMA)}, json.dumps({"round": 1}))


async def irr_tampered_state(_: Args, ctx: RequestContext) -> ToolResult:
    if ctx.request_state is None:
        return _input_required({"confirm": _ask("Please confirm", OK_SCHEMA)}, "round-1")
    return text_result(f"state-ok: {ctx.request_state}")


async def irr_capabilities(_: Args, ctx: RequestContext) -> ToolResult:
    requests: dict[str, Any] = {}
    if ctx.client_supports("sampling"):
        requests["sample"] = _sample("Say hello", 50)
    if ctx.client_supports("elicitation"):
        requests["ask"] = _ask("What is your name?", NAME_SCHEMA)
    return _input_required(requests, "capability-gated")


# -- tasks extension fixtures -------------------------------------------------------------------------------------


async def greet(arguments: Args, _: RequestContext) -> ToolResult:
    return text_result(f"Hello, {arguments['name']}!")


async def slow_compute(arguments: Args, _: RequestContext) -> ToolResult | RunAsTask:
    seconds, label = int(arguments.get("seconds", 3)), str(arguments.get("label", "default"))
    if seconds <= 0:
        return text_result(f'Computation "{label}" completed instantly. Result: 42.')

    async def compute(_: TaskContext) -> ToolResult:
        await asyncio.sleep(seconds)
        return text_result(f'Computation "{label}" completed after {seconds} seconds. Result: 42.')

    return RunAsTask(compute)


async def failing_job(_: Args, __: RequestContext) -> RunAsTask:
    async def fail(_: TaskContext) -> ToolResult:
        await asyncio.sleep(1)
        return text_result("simulated failure: job crashed", is_error=True)

    return RunAsTask(fail)


async def protocol_error_job(_: Args, __: RequestContext) -> RunAsTask:
    async def crash(_: TaskContext) -> ToolResult:
        await asyncio.sleep(0.5)
        raise InternalError("internal error: simulated protocol error: server internal failure")

    return RunAsTask(crash)


CONFIRM_SCHEMA = {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]}


def _accepted(answer: Any, field: str) -> Any:
    if isinstance(answer, dict) and answer.get("action") == "accept" and isinstance(answer.get("content"), dict):
        return answer["content"].get(field)
    return None


async def confirm_delete(arguments: Args, _: RequestContext) -> RunAsTask:
    filename = str(arguments.get("filename", "important.txt"))

    async def ask(task: TaskContext) -> ToolResult:
        answers = await task.ask({"elicit": _ask(f"Delete '{filename}'?", CONFIRM_SCHEMA)})
        confirmed = _accepted(answers["elicit"], "confirm") is True
        return text_result(f"deleted '{filename}'" if confirmed else f"kept '{filename}'")

    return RunAsTask(ask)


async def multi_input(_: Args, __: RequestContext) -> RunAsTask:
    async def ask(task: TaskContext) -> ToolResult:
        answers = await task.ask(
            {"name": _ask("Enter your name:", NAME_SCHEMA), "confirm": _ask("Confirm action?", CONFIRM_SCHEMA)}
        )
        return text_result(
            f'name="{_accepted(answers["name"], "name")}" confirmed={_accepted(answers["confirm"], "confirm")}'
        )

    return RunAsTask(ask)


async def tool_with_task(_: Args, ctx: RequestContext) -> ToolResult | RunAsTask:
    name = _elicited(ctx, "user_name", "name")
    if not isinstance(name, str):  # first ask, in the request itself; then finish as a task
        return _input_required({"user_name": _ask("What is your name?", NAME_SCHEMA)})

    async def compute(_: TaskContext) -> ToolResult:
        await asyncio.sleep(0.05)
        return text_result(f"Hello, {name}! (computed in task)")

    return RunAsTask(compute)


GREET_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "description": "Name to greet"}},
    "required": ["name"],
}
SLOW_SCHEMA = {
    "type": "object",
    "properties": {
        "seconds": {"type": "integer", "description": "How many seconds to compute (sleep)", "default": 3},
        "label": {"type": "string", "description": "A label for the computation", "default": "default"},
    },
}
FILENAME_SCHEMA = {
    "type": "object",
    "properties": {
        "filename": {
            "type": "string",
            "description": "File the user is being asked to confirm deletion of",
            "default": "important.txt",
        }
    },
}


def _tool(
    name: str, description: str, handler: Any, schema: Mapping[str, Any] = NO_ARGUMENTS, tasks: str | None = None
) -> ToolSpec:
    return ToolSpec(name=name, description=description, input_schema=schema, handler=handler, task_support=tasks)


def _string_argument(name: str) -> Mapping[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}


TOOLS = (
    _tool("test_simple_text", "Tests simple text content response", simple_text),
    _tool("test_image_content", "Tests image content response", image_content),
    _tool("test_audio_content", "Tests audio content response", audio_content),
    _tool("test_embedded_resource", "Tests embedded resource content response", embedded_resource),
    _tool(
        "test_multiple_content_types",
        "Tests response with multiple content types (text, image, resource)",
        multiple_content_types,
    ),
    _tool("test_tool_with_logging", "Tests tool that emits log messages during execution", tool_with_logging),
    _tool("test_tool_with_progress", "Tests tool that reports progress notifications", tool_with_progress),
    _tool("test_error_handling", "Tests error response handling", error_handling),
    _tool(
        "test_sampling",
        "Tests server-initiated sampling (LLM completion request)",
        sampling,
        _string_argument("prompt"),
    ),
    _tool(
        "test_elicitation",
        "Tests server-initiated elicitation (user input request)",
        elicitation,
        _string_argument("message"),
    ),
    _tool(
        "test_elicitation_sep1034_defaults",
        "Tests elicitation with default values for all primitive types (SEP-1034)",
        elicitation_sep1034_defaults,
    ),
    _tool(
        "test_elicitation_sep1330_enums",
        "Tests elicitation with enum schema variations per SEP-1330",
        elicitation_sep1330_enums,
    ),
    _tool(
        "json_schema_2020_12_tool",
        "Tests JSON Schema 2020-12 keyword preservation in tools/list",
        json_schema_tool,
        JSON_SCHEMA_2020_12,
    ),
    _tool("test_reconnection", "Tests SSE polling by closing stream mid-call (SEP-1699)", reconnection),
    _tool("test_missing_capability", "Test tool requiring sampling", missing_capability),
    _tool("test_streaming_elicitation", "Diagnostic tool validating response progress streams", streaming_elicitation),
    _tool("test_logging_tool", "Diagnostic logging validator tool", logging_tool),
    _tool("test_x_mcp_header", "Tests SEP-2243 Mcp-Param-* server-side validation", x_mcp_header, X_MCP_HEADER),
    _tool(
        "test_input_required_result_elicitation",
        "Tests InputRequiredResult with a single elicitation request",
        irr_elicitation,
    ),
    _tool(
        "test_input_required_result_sampling", "Tests InputRequiredResult with a single sampling request", irr_sampling
    ),
    _tool(
        "test_input_required_result_list_roots",
        "Tests InputRequiredResult with a single roots/list request",
        irr_list_roots,
    ),
    _tool(
        "test_input_required_result_request_state",
        "Tests requestState round-tripping in the InputRequiredResult flow",
        irr_request_state,
    ),
    _tool(
        "test_input_required_result_multiple_inputs",
        "Tests InputRequiredResult carrying elicitation, sampling and roots requests together",
        irr_multiple_inputs,
    ),
    _tool(
        "test_input_required_result_multi_round",
        "Tests a three-round InputRequiredResult flow with evolving requestState",
        irr_multi_round,
    ),
    _tool(
        "test_input_required_result_tampered_state",
        "Tests that the server rejects a tampered requestState echo",
        irr_tampered_state,
    ),
    _tool(
        "test_input_required_result_capabilities",
        "Tests that inputRequests only include methods the client declared support for",
        irr_capabilities,
    ),
    _tool("greet", "Greets by name, always at once", greet, GREET_SCHEMA),
    _tool(
        "slow_compute",
        "Computes for some seconds; runs as a task for clients with the tasks extension",
        slow_compute,
        SLOW_SCHEMA,
        tasks="optional",
    ),
    _tool("failing_job", "A task whose tool fails", failing_job, {"type": "object", "properties": {}}, "required"),
    _tool(
        "protocol_error_job",
        "A task that fails with a protocol error",
        protocol_error_job,
        {"type": "object", "properties": {}},
        "required",
    ),
    _tool(
        "confirm_delete",
        "Asks the user to confirm a deletion, inside a task",
        confirm_delete,
        FILENAME_SCHEMA,
        "required",
    ),
    _tool(
        "multi_input",
        "Asks the user two questions at once, inside a task",
        multi_input,
        {"type": "object", "properties": {}},
        "required",
    ),
    _tool(
        "test_tool_with_task",
        "Asks for a name first, then finishes as a task",
        tool_with_task,
        {"type": "object"},
        "required",
    ),
)


def _text(text: str, mime_type: str = "text/plain") -> Any:
    async def read(uri: str, _: Mapping[str, str]) -> ResourceContents:
        return [{"uri": uri, "mimeType": mime_type, "text": text}]

    return read


async def _binary(uri: str, _: Mapping[str, str]) -> ResourceContents:
    return [{"uri": uri, "mimeType": "image/png", "blob": base64.b64encode(base64.b64decode(IMAGE_PNG)).decode()}]


async def _template(uri: str, variables: Mapping[str, str]) -> ResourceContents:
    identifier = variables["id"]
    text = json.dumps({"id": identifier, "templateTest": True, "data": f"Data for ID: {identifier}"})
    return [{"uri": uri, "mimeType": "application/json", "text": text}]


STATIC_TEXT = "This is the content of the static text resource."
RESOURCES = (
    ResourceSpec(
        "test://static-text",
        "static_text_resource",
        _text(STATIC_TEXT),
        description="A static text resource for testing",
        mime_type="text/plain",
    ),
    ResourceSpec(
        "test://static-binary",
        "static_binary_resource",
        _binary,
        description="A static binary resource (image) for testing",
        mime_type="image/png",
    ),
    ResourceSpec(
        "test://watched-resource",
        "watched_resource",
        _text("Watched resource content"),
        description="A resource that can be subscribed to for updates",
        mime_type="text/plain",
    ),
)
TEMPLATES = (
    TemplateSpec(
        "test://template/{id}/data",
        "template_resource",
        _template,
        description="A resource template with parameter substitution",
        mime_type="application/json",
    ),
)


def _user(content: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": content}


async def simple_prompt(_: Mapping[str, str], __: RequestContext) -> list[dict[str, Any]]:
    return [_user({"type": "text", "text": "This is a simple prompt for testing."})]


async def prompt_with_arguments(arguments: Mapping[str, str], _: RequestContext) -> list[dict[str, Any]]:
    text = f"Prompt with arguments: arg1='{arguments['arg1']}', arg2='{arguments['arg2']}'"
    return [_user({"type": "text", "text": text})]


async def prompt_with_embedded_resource(arguments: Mapping[str, str], _: RequestContext) -> list[dict[str, Any]]:
    resource = {
        "uri": arguments["resourceUri"],
        "mimeType": "text/plain",
        "text": "Embedded resource content for testing.",
    }
    return [
        _user({"type": "resource", "resource": resource}),
        _user({"type": "text", "text": "Please process the embedded resource above."}),
    ]


async def prompt_with_image(_: Mapping[str, str], __: RequestContext) -> list[dict[str, Any]]:
    return [_user(_image()), _user({"type": "text", "text": "Please analyze the image above."})]


async def irr_prompt(_: Mapping[str, str], ctx: RequestContext) -> list[dict[str, Any]] | dict[str, Any]:
    context = _elicited(ctx, "user_context", "context")
    if isinstance(context, str):
        return [_user({"type": "text", "text": f"Use the following context: {context}"})]
    schema = {"type": "object", "properties": {"context": {"type": "string"}}, "required": ["context"]}
    return _input_required({"user_context": _ask("What context should the prompt use?", schema)})


PROMPTS = (
    PromptSpec("test_simple_prompt", simple_prompt, description="A simple prompt without arguments"),
    PromptSpec(
        "test_prompt_with_arguments",
        prompt_with_arguments,
        description="A prompt with required arguments",
        arguments=(
            PromptArgument("arg1", "First test argument", required=True),
            PromptArgument("arg2", "Second test argument", required=True),
        ),
    ),
    PromptSpec(
        "test_prompt_with_embedded_resource",
        prompt_with_embedded_resource,
        description="A prompt that includes an embedded resource",
        arguments=(PromptArgument("resourceUri", "URI of the resource to embed", required=True),),
    ),
    PromptSpec("test_prompt_with_image", prompt_with_image, description="A prompt that includes image content"),
    PromptSpec(
        "test_input_required_result_prompt",
        irr_prompt,
        description="Tests InputRequiredResult from prompts/get (SEP-2322 non-tool request)",
    ),
)


def _triggers(tools: Tools, prompts: Prompts) -> tuple[ToolSpec, ...]:
    """Tools that really change the offer (add, then remove, a dynamic entry) and announce the change."""

    async def dynamic_tool(_: Args, __: RequestContext) -> ToolResult:
        return text_result("dynamic")

    async def dynamic_prompt(_: Mapping[str, str], __: RequestContext) -> list[dict[str, Any]]:
        return [_user({"type": "text", "text": "dynamic"})]

    async def tool_change(_: Args, ctx: RequestContext) -> ToolResult:
        tools.add(_tool("test_dynamic_tool", "A tool registered and removed by test_trigger_tool_change", dynamic_tool))
        tools.remove("test_dynamic_tool")
        await ctx.notify_change("notifications/tools/list_changed")
        return text_result("tool list changed")

    async def prompt_change(_: Args, ctx: RequestContext) -> ToolResult:
        prompts.add(PromptSpec("test_dynamic_prompt", dynamic_prompt, description="dynamic"))
        prompts.remove("test_dynamic_prompt")
        await ctx.notify_change("notifications/prompts/list_changed")
        return text_result("prompt list changed")

    return (
        _tool("test_trigger_tool_change", "Mutates the tool list and announces it (SEP-2575)", tool_change),
        _tool("test_trigger_prompt_change", "Mutates the prompt list and announces it (SEP-2575)", prompt_change),
    )


def conformance_features(*, timeout_seconds: float, page_size: int) -> Features:
    """The fixtures of the conformance suite."""
    tools = Tools(TOOLS, timeout_seconds=timeout_seconds, page_size=page_size)
    prompts = Prompts(PROMPTS, page_size=page_size)
    for trigger in _triggers(tools, prompts):
        tools.add(trigger)
    return Features(
        tools=tools,
        resources=Resources(RESOURCES, TEMPLATES, page_size=page_size),
        prompts=prompts,
        dynamic=True,
    )
