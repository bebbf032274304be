"""A step's cheaper path, for when a downgrade budget asks for one.

Two sources, the first that applies wins: the step's own ``Step(..., downgrade=cheaper)`` (an agent,
or a ``Step`` with its own configuration), and the ``[downgrade]`` model mapping of ``paymaster.toml``
applied to an agent that exposes its model (``model_id``, ``model`` or ``model_name`` as a string, or
a ``with_model(ref)`` method). A mapped agent is a shallow copy of the original with the cheaper
model in the same attribute, written the way the original was (``"openai:gpt-4o-mini"`` or a bare
``"gpt-4o-mini"``), so a client that passes the attribute to its provider keeps working.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from paymaster._metering import agent_model
from paymaster.step import Step
from paymaster.usage import parse_model_ref

__all__ = ["CheaperPath", "describe_agent", "find_cheaper_path", "no_path_message"]


@dataclass(frozen=True, kw_only=True, slots=True)
class CheaperPath:
    """How to run a step on its cheaper path."""

    step: Step
    """The step to run instead: the original's name, the cheaper agent, the configuration to use."""
    source: str
    """``step`` (``Step(downgrade=...)``) or ``config`` (the ``[downgrade]`` mapping)."""
    from_label: str
    """What the step would have run (a model reference, or the agent's class)."""
    to_label: str
    """What it runs instead."""


def describe_agent(agent: Any) -> str:
    """A model reference (``openai:gpt-4o``) when the agent exposes one, else its class name."""
    found = agent_model(agent)
    if found is None:
        return type(agent).__name__
    return str(parse_model_ref(found[0], provider=found[1]))


def find_cheaper_path(step: Step, mapping: Mapping[str, str]) -> CheaperPath | None:
    """The step's cheaper path, or ``None`` when it has none."""
    declared = step.downgrade
    if declared is not None:
        if isinstance(declared, Step):
            cheaper = Step(step.name, declared.agent, config=declared.config, scopes=step.scopes)
        else:
            cheaper = Step(step.name, declared, config=_undeclared(step), scopes=step.scopes)
        return CheaperPath(
            step=cheaper,
            source="step",
            from_label=describe_agent(step.agent),
            to_label=describe_agent(cheaper.agent),
        )
    if not mapping:
        return None
    swapped = _mapped_agent(step.agent, mapping)
    if swapped is None:
        return None
    agent, origin, target = swapped
    return CheaperPath(
        step=Step(step.name, agent, config=_undeclared(step), scopes=step.scopes),
        source="config",
        from_label=origin,
        to_label=target,
    )


def no_path_message(step: Step, model: str | None) -> str:
    """What to do about a step that must downgrade and cannot."""
    mapped = (
        f'map its model in paymaster.toml ([downgrade] "{model}" = "<cheaper provider:model>")'
        if model
        else 'give its agent a model_id and map it in paymaster.toml ([downgrade] "provider:model" = "provider:cheaper-model")'
    )
    return (
        f"Step {step.name!r} has no cheaper path to run under the downgrade decision: "
        f"add one with Step({step.name!r}, agent, downgrade=cheaper_agent), or {mapped}."
    )


def _undeclared(step: Step) -> Any:
    """The step's configuration without its declared estimate: that figure was for the dearer agent."""
    return replace(step.config, expected_cost_usd=None, expected_tokens=None)


def _mapped_agent(agent: Any, mapping: Mapping[str, str]) -> tuple[Any, str, str] | None:
    found = agent_model(agent)
    if found is None:
        return None
    origin = str(parse_model_ref(found[0], provider=found[1]))
    target = mapping.get(origin)
    if target is None:
        return None
    with_model = getattr(agent, "with_model", None)
    if callable(with_model):
        return with_model(target), origin, target
    for attr in ("model_id", "model", "model_name"):
        value = getattr(agent, attr, None)
        if isinstance(value, str) and value:
            written = target if ":" in value else parse_model_ref(target).model
            try:
                clone = copy.copy(agent)
                setattr(clone, attr, written)
            except Exception:  # an agent that cannot be copied or changed has no mapped path
                return None
            return clone, origin, target
    return None
