"""Usage is read from what real agents return (SDK response objects built offline, pydantic-ai run
results, plain dicts), with inclusive counts; model references name their provider or infer it
only where the name is unambiguous."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from paymaster.exceptions import UsageReportError
from paymaster.usage import ImageUsage, ModelRef, ModelUsage, extract_usage, infer_provider, parse_model_ref

# ------------------------------------------------------------------------------ model references


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        ("gpt-4o", "openai"),
        ("gpt-4.1-mini", "openai"),
        ("chatgpt-4o-latest", "openai"),
        ("o1", "openai"),
        ("o1-mini", "openai"),
        ("o3", "openai"),
        ("o4-mini", "openai"),
        ("dall-e-3", "openai"),
        ("text-embedding-3-small", "openai"),
        ("whisper-1", "openai"),
        ("claude-3-haiku", "anthropic"),
        ("claude-sonnet-4-5", "anthropic"),
        ("gemini-1.5-pro", "google"),
        ("gemini-2.5-flash", "google"),
        ("text-embedding-004", "google"),
        ("command-r-plus", "cohere"),
        ("grok-4", "xai"),
        ("deepseek-chat", "deepseek"),
        ("mistral-large-latest", "mistral"),
    ],
)
def test_provider_is_inferred_from_unambiguous_names(name: str, provider: str) -> None:
    assert infer_provider(name) == provider
    assert parse_model_ref(name) == ModelRef(provider=provider, model=name)


@pytest.mark.parametrize(
    "name",
    [
        "llama-3-8b",
        "llama-2-7b",
        "mistral-7b",
        "mixtral-8x7b",
        "gemma-2-9b",
        "qwen2.5-72b",
        "o5x",
        "my-model",
    ],
)
def test_ambiguous_or_unknown_names_are_not_guessed(name: str) -> None:
    assert infer_provider(name) is None
    assert parse_model_ref(name).provider is None


def test_explicit_provider_prefix_wins_and_is_canonical() -> None:
    assert parse_model_ref("groq:llama-3-8b") == ModelRef(provider="groq", model="llama-3-8b")
    assert parse_model_ref("google-gla:gemini-2.0-flash") == ModelRef(
        provider="google", model="gemini-2.0-flash"
    )
    assert parse_model_ref("custom:my-model") == ModelRef(provider="custom", model="my-model")
    assert parse_model_ref("gpt-4o", provider="azure") == ModelRef(provider="azure", model="gpt-4o")
    assert parse_model_ref("openai:gpt-4o", provider="openai") == ModelRef(provider="openai", model="gpt-4o")
    assert str(parse_model_ref("openai:gpt-4o")) == "openai:gpt-4o"


def test_colons_inside_model_ids_are_not_provider_prefixes() -> None:
    assert parse_model_ref("ft:gpt-4o-mini:acme::abc123") == ModelRef(
        provider="openai", model="ft:gpt-4o-mini:acme::abc123"
    )
    bedrock = parse_model_ref("anthropic.claude-3-sonnet-20240229-v1:0")
    assert bedrock.provider is None


# ------------------------------------------------------------------------ real SDK response types


def test_openai_chat_completion_with_cached_and_reasoning_details() -> None:
    chat = pytest.importorskip("openai.types.chat")
    completion = chat.ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hello"}}
            ],
            "usage": {
                "prompt_tokens": 1200,
                "completion_tokens": 300,
                "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 200},
                "completion_tokens_details": {"reasoning_tokens": 100},
            },
        }
    )
    assert extract_usage(completion) == ModelUsage(
        input_tokens=1200,
        output_tokens=300,
        cache_read_tokens=200,
        reasoning_tokens=100,
        total_tokens=1500,
        model="gpt-4o-2024-08-06",
    )


def test_openai_responses_api_usage() -> None:
    responses = pytest.importorskip("openai.types.responses")
    response = responses.Response.model_validate(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 1,
            "model": "o4-mini",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 1000,
                "output_tokens": 400,
                "total_tokens": 1400,
                "input_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 250},
            },
        }
    )
    usage = extract_usage(response)
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens, usage.reasoning_tokens) == (
        1000,
        600,
        400,
        250,
    )
    assert usage.model == "o4-mini"


def test_anthropic_message_cache_tokens_are_added_to_input() -> None:
    """Anthropic reports cache reads and writes outside input_tokens; they are billed input."""
    types = pytest.importorskip("anthropic.types")
    message = types.Message.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 100,
                "output_tokens": 50,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 200,
            },
        }
    )
    assert extract_usage(message) == ModelUsage(
        input_tokens=1300,
        output_tokens=50,
        cache_read_tokens=1000,
        cache_write_tokens=200,
        model="claude-sonnet-4-5",
    )


def test_openai_images_response_counts_its_images() -> None:
    openai_types = pytest.importorskip("openai.types")
    response = openai_types.ImagesResponse.model_validate(
        {"created": 1, "data": [{"url": "https://example.test/1.png"}, {"url": "https://example.test/2.png"}]}
    )
    usage = extract_usage(response)
    assert usage is not None
    assert usage.images == (ImageUsage(count=2, quality="standard", size="1024x1024"),)
    sized = openai_types.ImagesResponse.model_validate(
        {"created": 1, "data": [{"b64_json": "AA=="}], "quality": "high", "size": "1536x1024"}
    )
    assert extract_usage(sized).images == (ImageUsage(count=1, quality="high", size="1536x1024"),)  # type: ignore[union-attr]


def _pydantic_ai_result(**usage: int) -> tuple[Any, Any]:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, TextPart
    from pydantic_ai.models.function import FunctionModel
    from pydantic_ai.usage import RequestUsage

    def respond(messages: Any, info: Any) -> ModelResponse:
        return ModelResponse(parts=[TextPart("done")], usage=RequestUsage(**usage))

    agent = Agent(FunctionModel(respond, model_name="gpt-4o"))
    return agent, asyncio.run(agent.run("hello"))


def test_pydantic_ai_run_result() -> None:
    _, result = _pydantic_ai_result(
        input_tokens=1200, output_tokens=300, cache_read_tokens=200, output_reasoning_tokens=50
    )
    assert extract_usage(result) == ModelUsage(
        input_tokens=1200,
        output_tokens=300,
        cache_read_tokens=200,
        reasoning_tokens=50,
        total_tokens=1500,
        model="gpt-4o",
    )


# ------------------------------------------------------------------ faithful stand-ins and dicts


@dataclass
class LegacyUsage:
    """pydantic-ai before 1.0: request/response token names, details dict."""

    requests: int = 1
    request_tokens: int | None = None
    response_tokens: int | None = None
    total_tokens: int | None = None
    details: dict[str, int] = field(default_factory=dict)


@dataclass
class LegacyRunResult:
    """pydantic-ai before 1.0: ``usage()`` is a method."""

    output: str
    _usage: LegacyUsage

    def usage(self) -> LegacyUsage:
        return self._usage


def test_legacy_usage_method_with_request_response_tokens_and_details() -> None:
    result = LegacyRunResult(
        "x",
        LegacyUsage(
            request_tokens=900, response_tokens=100, details={"reasoning_tokens": 40, "cached_tokens": 300}
        ),
    )
    assert extract_usage(result) == ModelUsage(
        input_tokens=900, output_tokens=100, cache_read_tokens=300, reasoning_tokens=40
    )


def test_dict_shaped_responses_are_read_like_objects() -> None:
    raw = {
        "model": "gpt-4o-mini",
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}},
    }
    assert extract_usage(raw) == ModelUsage(
        input_tokens=10, output_tokens=5, cache_read_tokens=4, model="gpt-4o-mini"
    )


@dataclass
class ImageResult:
    images: Any
    quality: str = "standard"
    size: str = "1024x1024"


def test_image_counts_with_quality_and_size() -> None:
    assert extract_usage(ImageResult(images=2, quality="HD", size="1792x1024")) == ModelUsage(
        images=(ImageUsage(count=2, quality="hd", size="1792x1024"),)
    )
    mixed = ImageResult(images=[{"quality": "hd"}, {"count": 2, "size": "1024x1792"}])
    assert extract_usage(mixed).images == (  # type: ignore[union-attr]
        ImageUsage(count=1, quality="hd", size="1024x1024"),
        ImageUsage(count=2, quality="standard", size="1024x1792"),
    )
    in_details = {"usage": {"input_tokens": 0, "output_tokens": 0, "details": {"images": 3}}}
    assert extract_usage(in_details).image_count == 3  # type: ignore[union-attr]


def test_outputs_without_usage_report_none() -> None:
    assert extract_usage("plain text") is None
    assert extract_usage({"answer": 42}) is None
    assert extract_usage(ImageResult(images=0)) is None


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            {"usage": {"input_tokens": -5, "output_tokens": 1}},
            "input_tokens must not be negative, got -5 (from dict)",
        ),
        ({"usage": {"prompt_tokens": 1.5}}, "prompt_tokens must be a whole number, got 1.5 (from dict)"),
        (
            {"usage": {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 11}}},
            "cached input tokens (11 read + 0 written) exceed input_tokens (10) (from dict)",
        ),
        (ImageResult(images=-1), "images must not be negative, got -1 (from ImageResult)"),
    ],
)
def test_impossible_usage_is_refused_naming_field_and_output(output: Any, message: str) -> None:
    with pytest.raises(UsageReportError) as info:
        extract_usage(output)
    assert str(info.value) == message


def test_model_usage_checks_its_own_counts() -> None:
    with pytest.raises(UsageReportError, match="reasoning_tokens \\(9\\) exceed output_tokens \\(8\\)"):
        ModelUsage(output_tokens=8, reasoning_tokens=9)
    with pytest.raises(UsageReportError, match="output_tokens must not be negative"):
        ModelUsage(output_tokens=-1)
    assert ModelUsage(input_tokens=3, output_tokens=4).tokens == 7
    assert ModelUsage(input_tokens=3, output_tokens=4, total_tokens=9).tokens == 9


def test_a_usage_property_that_raises_is_treated_as_absent() -> None:
    class Broken:
        @property
        def usage(self) -> Callable[[], Any]:
            raise RuntimeError("not available")

    assert extract_usage(Broken()) is None
