"""The pipeline DSL: ``Step`` (an agent call), ``LoopStep``, ``ParallelStep`` and ``Pipeline``.

Steps are plain objects built in code (``Step(name=..., agent=...)``) or from a mapping
(``Step.model_validate({...})``); ``>>`` composes steps and pipelines. Nothing here runs anything:
the executor walks these definitions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from paymaster.exceptions import ConfigError
from paymaster.limits import UsageLimits
from paymaster.money import to_decimal, to_tokens

if TYPE_CHECKING:
    from paymaster.scopes import Scopes

__all__ = ["LoopStep", "ParallelStep", "Pipeline", "Step", "StepConfig"]

ExitCondition = Callable[[Any, Any], bool]
IterationMapper = Callable[[Any, Any, int], Any]
QuotaStrategy = Literal["shared", "split"]


@dataclass(kw_only=True, slots=True)
class StepConfig:
    """How one step runs and what it is expected to cost."""

    expected_cost_usd: Decimal | None = None
    """Declared cost of one call, reserved before it runs (the estimator honours it first)."""
    expected_tokens: int | None = None
    """Declared tokens of one call, reserved before it runs."""
    max_retries: int = 0
    """Extra attempts after the agent raises; each attempt's usage is counted."""
    timeout_s: float | None = None
    """Seconds one attempt may take before it is cancelled and counted as failed."""

    def __post_init__(self) -> None:
        try:
            if self.expected_cost_usd is not None:
                self.expected_cost_usd = to_decimal(self.expected_cost_usd, what="expected_cost_usd")
            if self.expected_tokens is not None:
                self.expected_tokens = to_tokens(self.expected_tokens, what="expected_tokens")
        except ValueError as exc:
            raise ConfigError(f"StepConfig: {exc}") from None
        if self.max_retries < 0:
            raise ConfigError(f"StepConfig: max_retries must not be negative, got {self.max_retries}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"StepConfig: timeout_s must be positive, got {self.timeout_s}")


class Step:
    """One agent call, governed: estimated, reserved, run, priced and reconciled."""

    kind: str = "agent"

    __slots__ = ("agent", "config", "downgrade", "name", "scopes", "usage_limits")

    def __init__(
        self,
        name: str,
        agent: Any = None,
        *,
        usage_limits: UsageLimits | None = None,
        config: StepConfig | None = None,
        scopes: Scopes | Mapping[str, str] | None = None,
        downgrade: Any = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Step name must be a non-empty string, got {name!r}")
        if self.kind == "agent" and not callable(getattr(agent, "run", None)):
            raise ConfigError(
                f"Step '{name}': agent must be an object with a run(data) method, got {type(agent).__name__}"
            )
        if usage_limits is not None and not isinstance(usage_limits, UsageLimits):
            raise ConfigError(
                f"Step '{name}': usage_limits must be UsageLimits, got {type(usage_limits).__name__}"
            )
        self.name = name
        self.agent = agent
        self.usage_limits = None if usage_limits is None or usage_limits.is_unlimited else usage_limits
        self.config = config or StepConfig()
        self.scopes: Scopes | None = None if scopes is None else _scopes(scopes, name)
        """Scope ids this step's spend is charged to in the sidecar, over the runner's (e.g. another agent)."""
        if downgrade is not None and not (
            (isinstance(downgrade, Step) and downgrade.kind == "agent")
            or callable(getattr(downgrade, "run", None))
        ):
            raise ConfigError(
                f"Step '{name}': downgrade must be a cheaper agent (an object with run(data)) or an agent "
                f"Step, got {type(downgrade).__name__}"
            )
        self.downgrade: Any = downgrade
        """The cheaper path a sidecar downgrade decision runs: an agent, or a Step with its own config."""

    # ------------------------------------------------------------ construction
    @classmethod
    def model_validate(cls, obj: Mapping[str, Any] | Step) -> Step:
        """Build a step from a mapping (``{"name": ..., "agent": ...}``); unknown keys are refused."""
        if isinstance(obj, Step):
            return obj
        if not isinstance(obj, Mapping):
            raise ConfigError(f"Step.model_validate expects a mapping, got {type(obj).__name__}")
        allowed = {"name", "agent", "usage_limits", "config", "scopes", "downgrade"}
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise ConfigError(
                f"Step.model_validate: unknown key(s) {unknown}; expected some of {sorted(allowed)}"
            )
        if "name" not in obj:
            raise ConfigError("Step.model_validate: 'name' is required")
        kwargs = dict(obj)
        kwargs["usage_limits"] = _coerce(kwargs.get("usage_limits"), UsageLimits, "usage_limits")
        kwargs["config"] = _coerce(kwargs.get("config"), StepConfig, "config")
        return cls(**kwargs)

    @classmethod
    def adapter(cls, name: str, fn: Callable[[Any], Any]) -> AdapterStep:
        """A step that transforms data without a model call: never estimated, reserved or priced."""
        return AdapterStep(name, fn)

    @staticmethod
    def loop_until(
        *,
        name: str,
        loop_body_pipeline: Pipeline | Step,
        exit_condition_callable: ExitCondition,
        max_loops: int = 5,
        iteration_input_mapper: IterationMapper | None = None,
        usage_limits: UsageLimits | None = None,
    ) -> LoopStep:
        """Run ``loop_body_pipeline`` until ``exit_condition_callable(output, context)`` is true."""
        return LoopStep(
            name,
            body=Pipeline.coerce(loop_body_pipeline),
            exit_condition=exit_condition_callable,
            max_loops=max_loops,
            mapper=iteration_input_mapper,
            usage_limits=usage_limits,
        )

    @staticmethod
    def parallel(
        name: str,
        branches: Mapping[str, Pipeline | Step],
        *,
        quota: QuotaStrategy = "shared",
        usage_limits: UsageLimits | None = None,
    ) -> ParallelStep:
        """Run every branch concurrently on the same input; the output maps branch names to outputs."""
        return ParallelStep(name, branches=branches, strategy=quota, usage_limits=usage_limits)

    # ---------------------------------------------------------------- composing
    def __rshift__(self, other: Step | Pipeline) -> Pipeline:
        return Pipeline.from_step(self) >> other

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class AdapterStep(Step):
    """A data transformation between agent steps; costs nothing and is never governed."""

    kind = "adapter"
    __slots__ = ()

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        if not callable(fn):
            raise ConfigError(f"Adapter step '{name}': expected a callable, got {type(fn).__name__}")
        super().__init__(name, fn)


class LoopStep(Step):
    """Repeats a body pipeline; every iteration reserves and reconciles against the same quota."""

    kind = "loop"
    __slots__ = ("body", "exit_condition", "mapper", "max_loops")

    def __init__(
        self,
        name: str,
        *,
        body: Pipeline,
        exit_condition: ExitCondition,
        max_loops: int,
        mapper: IterationMapper | None = None,
        usage_limits: UsageLimits | None = None,
    ) -> None:
        super().__init__(name, usage_limits=usage_limits)
        if not isinstance(max_loops, int) or isinstance(max_loops, bool) or max_loops < 1:
            raise ConfigError(f"Loop '{name}': max_loops must be a positive integer, got {max_loops!r}")
        if not callable(exit_condition):
            raise ConfigError(f"Loop '{name}': exit_condition_callable must be callable")
        if mapper is not None and not callable(mapper):
            raise ConfigError(f"Loop '{name}': iteration_input_mapper must be callable")
        self.body = body
        self.exit_condition = exit_condition
        self.max_loops = max_loops
        self.mapper = mapper


class ParallelStep(Step):
    """Runs branches concurrently; a breach in one cancels the others at once."""

    kind = "parallel"
    __slots__ = ("branches", "strategy")

    def __init__(
        self,
        name: str,
        *,
        branches: Mapping[str, Pipeline | Step],
        strategy: QuotaStrategy = "shared",
        usage_limits: UsageLimits | None = None,
    ) -> None:
        super().__init__(name, usage_limits=usage_limits)
        if not branches:
            raise ConfigError(f"Parallel step '{name}': at least one branch is needed")
        if strategy not in ("shared", "split"):
            raise ConfigError(f"Parallel step '{name}': quota must be 'shared' or 'split', got {strategy!r}")
        self.branches = {str(k): Pipeline.coerce(v) for k, v in branches.items()}
        self.strategy: QuotaStrategy = strategy
        if strategy == "shared":
            splitting = [(k, s) for k, b in self.branches.items() if (s := _splitter(b)) is not None]
            if len(splitting) >= 2:
                (k1, s1), (k2, s2) = splitting[:2]
                raise ConfigError(
                    f"Parallel step '{name}': branches '{k1}' and '{k2}' both run a split parallel "
                    f"('{s1.name}', '{s2.name}') on the one quota this step shares, and a quota is split "
                    f"by one parallel at a time; give '{name}' quota='split' so that each branch splits "
                    "its own share, or give those steps their own usage_limits"
                )


def _splitter(pipeline: Pipeline) -> ParallelStep | None:
    """The first split parallel that running ``pipeline`` would split the quota it is given with (not
    one inside a step with its own ``usage_limits``, which splits that step's own quota)."""
    for step in pipeline.steps:
        if step.usage_limits is not None:
            continue
        if isinstance(step, ParallelStep):
            if step.strategy == "split":
                return step
            for branch in step.branches.values():
                if (found := _splitter(branch)) is not None:
                    return found
        elif isinstance(step, LoopStep) and (found := _splitter(step.body)) is not None:
            return found
    return None


class Pipeline:
    """An ordered sequence of steps; each step's output is the next one's input."""

    __slots__ = ("steps",)

    def __init__(self, steps: Iterable[Step]) -> None:
        self.steps: tuple[Step, ...] = tuple(steps)
        if not self.steps:
            raise ConfigError("A pipeline needs at least one step")
        for s in self.steps:
            if not isinstance(s, Step):
                raise ConfigError(f"Pipeline steps must be Step objects, got {type(s).__name__}")

    @classmethod
    def from_step(cls, step: Step) -> Pipeline:
        """A one-step pipeline."""
        return cls([step])

    @classmethod
    def coerce(cls, value: Pipeline | Step) -> Pipeline:
        """A pipeline as is, or a step wrapped in one."""
        if isinstance(value, Pipeline):
            return value
        if isinstance(value, Step):
            return cls.from_step(value)
        raise ConfigError(f"Expected a Step or a Pipeline, got {type(value).__name__}")

    def __rshift__(self, other: Step | Pipeline) -> Pipeline:
        return Pipeline(self.steps + Pipeline.coerce(other).steps)

    def __repr__(self) -> str:
        return f"Pipeline({' >> '.join(s.name for s in self.steps)})"


def _scopes(value: Scopes | Mapping[str, str], name: str) -> Scopes | None:
    from paymaster.scopes import Scopes

    return Scopes.coerce(value, where=f"Step '{name}'")


def _coerce(value: Any, cls: type[Any], what: str) -> Any:
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(
                f"Step.model_validate: unknown key(s) {unknown} in '{what}'; expected some of {sorted(names)}"
            )
        return cls(**value)
    raise ConfigError(
        f"Step.model_validate: '{what}' must be a {cls.__name__} or a mapping, got {type(value).__name__}"
    )
