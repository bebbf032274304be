"""Estimating a step before it runs: what the quota reserves for it.

Precedence, as the seeds document it: an estimator injected into ``ExecutorCore(usage_estimator=...)``
decides every step; otherwise the first rule of ``ExecutorCore(estimator_factory=...)`` whose
predicate matches the step; otherwise the default heuristic, which tries in turn

1. the step's own ``StepConfig.expected_cost_usd`` / ``expected_tokens`` (``heuristic``),
2. the ``LearningEstimator`` (by default the process's in-memory ``default_learner()``), once it has
   seen enough runs of this step and model (``learned``): one for an agent that reports its own
   cost, five for one priced from its tokens,
3. ``[cost.estimators.<provider>."<model>"]`` hints from ``paymaster.toml`` (``config_hint``),
4. a bound from the model's price and the request: input tokens approximated as characters / 4,
   plus the agent's ``max_tokens`` of output (``heuristic``),
5. zero (``minimal``).

An explicit declaration beats a measurement, and a measurement of this very step beats a per-model
hint or a price bound. Adapter and validation steps call no model and estimate zero. Estimating is
on the hot path of every step: it reads no file, and model lookups are cached.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from paymaster._estimate import ZERO_ESTIMATE, UsageEstimate
from paymaster._metering import MeasuredUsage, agent_model
from paymaster.exceptions import ConfigError, PricingNotConfiguredError
from paymaster.money import ZERO
from paymaster.pricing import CostCalculator, default_calculator
from paymaster.usage import ModelRef, ModelUsage

__all__ = [
    "CHARS_PER_TOKEN",
    "EstimatorRegistry",
    "EstimatorRule",
    "HeuristicEstimator",
    "LearnedStats",
    "LearningEstimator",
    "UsageEstimator",
    "UsageEstimatorFactory",
    "default_heuristic",
    "default_learner",
    "resolve_estimate",
]

CHARS_PER_TOKEN = 4
"""The cheap approximation of input size: English text averages about four characters a token."""
_FREE_KINDS = frozenset({"adapter", "validation"})
_MTOK = 1_000_000


class UsageEstimator(Protocol):
    """Anything that can say what a step will use before it runs."""

    def estimate(self, step: Any, data: Any, context: Any) -> UsageEstimate:
        """The usage to reserve for ``step`` run on ``data``."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class EstimatorRule:
    """One registered rule: steps matching ``predicate`` are estimated by ``estimator``."""

    name: str
    """Shown in telemetry as the strategy ``registry:<name>``."""
    predicate: Callable[[Any], bool]
    """Called with the step; true selects this rule."""
    estimator: UsageEstimator
    """The estimator to use for matching steps."""


class EstimatorRegistry:
    """Rules tried in registration order; the first whose predicate matches a step wins."""

    def __init__(self) -> None:
        self._rules: list[EstimatorRule] = []

    def register(
        self, predicate: Callable[[Any], bool], estimator: UsageEstimator, *, name: str | None = None
    ) -> EstimatorRule:
        """Add a rule; ``name`` defaults to the estimator's class name."""
        if not callable(predicate):
            raise ConfigError(f"EstimatorRegistry.register: predicate must be callable, got {predicate!r}")
        if not callable(getattr(estimator, "estimate", None)):
            raise ConfigError(
                f"EstimatorRegistry.register: estimator must have estimate(step, data, context), "
                f"got {type(estimator).__name__}"
            )
        rule = EstimatorRule(name=name or type(estimator).__name__, predicate=predicate, estimator=estimator)
        self._rules.append(rule)
        return rule

    def match(self, step: Any) -> EstimatorRule | None:
        """The first rule whose predicate accepts ``step``."""
        for rule in self._rules:
            if rule.predicate(step):
                return rule
        return None

    def __iter__(self) -> Iterator[EstimatorRule]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)


class UsageEstimatorFactory:
    """Chooses an estimator per step: the registry's rules, else the default heuristic."""

    def __init__(
        self, registry: EstimatorRegistry | None = None, *, heuristic: HeuristicEstimator | None = None
    ):
        self.registry = registry if registry is not None else EstimatorRegistry()
        self._heuristic = heuristic

    @property
    def heuristic(self) -> HeuristicEstimator:
        """The fallback when no rule matches (the process default unless one was given)."""
        return self._heuristic if self._heuristic is not None else default_heuristic()

    def select(self, step: Any) -> tuple[UsageEstimator, str] | None:
        """The matching rule's estimator and its strategy label, or ``None`` when no rule matches."""
        rule = self.registry.match(step)
        return None if rule is None else (rule.estimator, f"registry:{rule.name}")


class HeuristicEstimator:
    """The default estimate: declared, learned, hinted, price-bound, or minimal (see the module)."""

    def __init__(
        self,
        calculator: CostCalculator | None = None,
        *,
        assumed_output_tokens: int = 512,
        chars_per_token: int = CHARS_PER_TOKEN,
    ) -> None:
        if assumed_output_tokens < 0 or chars_per_token < 1:
            raise ConfigError(
                "HeuristicEstimator: assumed_output_tokens >= 0 and chars_per_token >= 1 are needed"
            )
        self.calculator = calculator if calculator is not None else default_calculator()
        self.assumed_output_tokens = assumed_output_tokens
        """Output tokens assumed when the agent exposes no ``max_tokens``."""
        self.chars_per_token = chars_per_token
        self._rates: dict[ModelRef, tuple[Decimal, Decimal] | None] = {}

    def estimate(self, step: Any, data: Any, context: Any) -> UsageEstimate:
        """The estimate alone (the ``UsageEstimator`` protocol)."""
        return self.estimate_with_strategy(step, data, context)[0]

    def estimate_with_strategy(
        self, step: Any, data: Any, context: Any, *, learned: LearningEstimator | None = None
    ) -> tuple[UsageEstimate, str]:
        """The estimate and the strategy that produced it."""
        if getattr(step, "kind", "agent") in _FREE_KINDS:
            return ZERO_ESTIMATE, "minimal"
        agent = getattr(step, "agent", None)
        config = getattr(step, "config", None)
        cost, tokens = getattr(config, "expected_cost_usd", None), getattr(config, "expected_tokens", None)
        if learned is not None and cost is None and tokens is None:
            known = learned.lookup(step)  # before any model lookup: on the hot path of every call
            if known is not None:
                return known, "learned"
        found = agent_model(agent)
        ref = None if found is None else self.calculator.resolve(*found)
        declared = _declared(cost, tokens, ref, self)
        if declared is not None:
            return declared, "heuristic"
        if ref is None:
            return ZERO_ESTIMATE, "minimal"
        hint = self.calculator.cost.hint_for(ref)
        if hint is not None:
            hinted = _declared(hint.expected_cost_usd, hint.expected_tokens, ref, self)
            if hinted is not None:
                return hinted, "config_hint"
        bound = self._price_bound(ref, agent, data)
        return (bound, "heuristic") if bound is not None else (ZERO_ESTIMATE, "minimal")

    def static_estimate(
        self, step: Any, *, learned: LearningEstimator | None = None
    ) -> tuple[UsageEstimate, str] | None:
        """The estimate when it cannot depend on the step's input or on what was learned meanwhile
        (a free step, declared figures, no model, a config hint), else ``None``. The executor keeps
        it for the rest of the run instead of estimating the same step again at every iteration."""
        if getattr(step, "kind", "agent") in _FREE_KINDS:
            return ZERO_ESTIMATE, "minimal"
        config = getattr(step, "config", None)
        declared = getattr(config, "expected_cost_usd", None) is not None or (
            getattr(config, "expected_tokens", None) is not None
        )
        if not declared and learned is not None:
            return None  # what is learned changes from call to call (the executor asks it first)
        found = agent_model(getattr(step, "agent", None))
        hinted = (
            found is not None and self.calculator.cost.hint_for(self.calculator.resolve(*found)) is not None
        )
        if declared or found is None or hinted:
            return self.estimate_with_strategy(step, None, None, learned=learned)
        return None  # a price bound: it grows with the input

    def rates(self, ref: ModelRef) -> tuple[Decimal, Decimal] | None:
        """USD per input token and per output token of a model, or ``None`` when unpriced (cached)."""
        if ref not in self._rates:
            self._rates[ref] = self._lookup_rates(ref)
        return self._rates[ref]

    def _lookup_rates(self, ref: ModelRef) -> tuple[Decimal, Decimal] | None:
        try:
            # A million tokens reaches the top tier of tiered prices: the bound errs high.
            cin = self.calculator.price(
                ModelUsage(input_tokens=_MTOK), model=ref.model, provider=ref.provider
            )
            cout = self.calculator.price(
                ModelUsage(output_tokens=_MTOK), model=ref.model, provider=ref.provider
            )
        except PricingNotConfiguredError:
            return None  # strict mode refuses this model at preflight; nothing to bound here
        if cin.cost_usd is None or cout.cost_usd is None:
            return None
        return cin.cost_usd / _MTOK, cout.cost_usd / _MTOK

    def _price_bound(self, ref: ModelRef, agent: Any, data: Any) -> UsageEstimate | None:
        rates = self.rates(ref)
        if rates is None:
            return None
        input_tokens = math.ceil(_chars(data) / self.chars_per_token)
        output_tokens = _max_tokens(agent)
        if output_tokens is None:
            output_tokens = self.assumed_output_tokens
        cost = input_tokens * rates[0] + output_tokens * rates[1]
        return UsageEstimate(cost_usd=cost, tokens=input_tokens + output_tokens)


def _declared(
    cost: Decimal | None, tokens: int | None, ref: ModelRef | None, heuristic: HeuristicEstimator
) -> UsageEstimate | None:
    """A declared estimate; tokens declared without a cost are priced at the model's output rate
    (the dearer side), so declaring tokens alone still reserves money."""
    if cost is None and tokens is None:
        return None
    if cost is None:
        rates = heuristic.rates(ref) if ref is not None and tokens else None
        cost = tokens * max(rates) if rates is not None and tokens else ZERO
    return UsageEstimate(cost_usd=cost, tokens=tokens or 0)


def _chars(data: Any) -> int:
    if data is None:
        return 0
    if isinstance(data, (str, bytes)):
        return len(data)
    try:
        return len(str(data))
    except Exception:  # an unprintable input is sized as empty rather than failing the step
        return 0


def _max_tokens(agent: Any) -> int | None:
    """``max_tokens`` from the agent, or from its ``model_settings`` (pydantic-ai)."""
    for holder in (agent, getattr(agent, "model_settings", None), getattr(agent, "settings", None)):
        value = (
            holder.get("max_tokens") if isinstance(holder, Mapping) else getattr(holder, "max_tokens", None)
        )
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


_default: tuple[CostCalculator, HeuristicEstimator] | None = None
_default_lock = threading.Lock()


def default_heuristic() -> HeuristicEstimator:
    """The process's ``HeuristicEstimator`` on the configuration found by the usual search."""
    global _default
    calculator = default_calculator()
    with _default_lock:
        if _default is None or _default[0] is not calculator:
            _default = (calculator, HeuristicEstimator(calculator))
        return _default[1]


def resolve_estimate(
    step: Any,
    data: Any,
    context: Any,
    *,
    injected: UsageEstimator | None = None,
    factory: UsageEstimatorFactory | None = None,
    learned: LearningEstimator | None = None,
) -> tuple[UsageEstimate, str]:
    """The estimate to reserve for ``step`` and the strategy label actually used:
    ``injected``, ``registry:<name>``, ``heuristic``, ``learned``, ``config_hint`` or ``minimal``."""
    if injected is not None:
        return _checked(injected, injected.estimate(step, data, context)), "injected"
    if factory is not None:
        selected = factory.select(step)
        if selected is not None:
            estimator, label = selected
            return _checked(estimator, estimator.estimate(step, data, context)), label
        return factory.heuristic.estimate_with_strategy(step, data, context, learned=learned)
    return default_heuristic().estimate_with_strategy(step, data, context, learned=learned)


def _checked(estimator: object, estimate: object) -> UsageEstimate:
    if not isinstance(estimate, UsageEstimate):
        raise ConfigError(
            f"{type(estimator).__name__}.estimate() must return a UsageEstimate, got {type(estimate).__name__}"
        )
    return estimate


# ------------------------------------------------------------------------------ learning estimator
_FORMAT = "paymaster-learned-estimates/1"
_MAX_KEYS = 4096
_N = TypeVar("_N", Decimal, int)


@dataclass(frozen=True, kw_only=True, slots=True)
class LearnedStats:
    """What the learning estimator knows of one (step, model)."""

    observations: int
    """Calls observed in total (the window keeps only the latest)."""
    cost_usd: Decimal
    """The configured quantile of the recent costs: what it reserves."""
    tokens: int
    """The configured quantile of the recent token counts."""
    mean_cost_usd: Decimal
    """Mean cost over the window, for comparison."""


class _Series:
    """The recent actual usage of one (step, model): the window in arrival order, and kept sorted
    (so the quantile is an index, not a sort on every call)."""

    __slots__ = (
        "costs",
        "estimate",
        "explicit",
        "observations",
        "sorted_costs",
        "sorted_tokens",
        "stats",
        "tokens",
        "total_cost",
    )

    def __init__(self, window: int, *, explicit: bool = False) -> None:
        self.costs: deque[Decimal] = deque(maxlen=window)
        self.tokens: deque[int] = deque(maxlen=window)
        self.sorted_costs: list[Decimal] = []
        self.sorted_tokens: list[int] = []
        self.total_cost = ZERO
        self.observations = 0
        self.explicit = explicit
        """Every observation was a cost the agent reported itself (nothing else could estimate it)."""
        self.stats: LearnedStats | None = None  # computed on demand, dropped on every observation
        self.estimate: UsageEstimate | None = None  # the last estimate, kept while it is unchanged

    def add(self, cost: Decimal, tokens: int) -> None:
        if len(self.costs) == self.costs.maxlen:  # the oldest leaves the window
            oldest_cost, oldest_tokens = self.costs[0], self.tokens[0]
            del self.sorted_costs[bisect.bisect_left(self.sorted_costs, oldest_cost)]
            del self.sorted_tokens[bisect.bisect_left(self.sorted_tokens, oldest_tokens)]
            self.total_cost -= oldest_cost
        self.costs.append(cost)
        self.tokens.append(tokens)
        bisect.insort(self.sorted_costs, cost)
        bisect.insort(self.sorted_tokens, tokens)
        self.total_cost += cost
        self.observations += 1
        self.stats = None


class LearningEstimator:
    """Estimates a step from what it actually used before, per (step name, model).

    Each observation (``observe``, called by the executor after every priced call) joins a window
    of the latest ``window`` calls; once ``min_samples`` are in, the estimate is the ``quantile``
    (nearest rank) of the window's costs and, separately, of its token counts: a high quantile
    reserves enough for nearly every call without reserving for the single worst one ever seen.
    A step whose every call reported its own cost (``explicit``: a paid tool, an agent that prices
    itself) has no price to bound it otherwise, so ``min_explicit_samples`` calls calibrate it.
    Calls whose cost is unknown teach nothing and are skipped. At most ``max_series`` (step, model)
    pairs are kept: past it, the one observed longest ago is forgotten. ``save()`` writes the windows
    to ``path`` atomically (write a temporary file, then rename), and a new estimator on the same
    path starts calibrated. Several processes may share a file; the last to save wins.

    Every runner learns by default, in memory, through the process's ``default_learner()``.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        min_samples: int = 5,
        min_explicit_samples: int | None = None,
        quantile: float = 0.95,
        window: int = 100,
        max_series: int | None = None,
        autosave_every: int | None = None,
        fallback: UsageEstimator | None = None,
    ) -> None:
        explicit = min_samples if min_explicit_samples is None else min_explicit_samples
        if min_samples < 1 or explicit < 1 or window < max(min_samples, explicit) or not 0 < quantile <= 1:
            raise ConfigError(
                f"LearningEstimator: need 1 <= min_samples, min_explicit_samples <= window and "
                f"0 < quantile <= 1, got min_samples={min_samples}, min_explicit_samples={explicit}, "
                f"window={window}, quantile={quantile}"
            )
        if max_series is not None and max_series < 1:
            raise ConfigError(f"LearningEstimator: max_series must be positive, got {max_series}")
        if autosave_every is not None and (autosave_every < 1 or path is None):
            raise ConfigError("LearningEstimator: autosave_every needs a path and a positive count")
        self.path = None if path is None else Path(path)
        self.min_samples, self.quantile, self.window = min_samples, quantile, window
        self.min_explicit_samples = explicit
        self.max_series = max_series
        self.autosave_every = autosave_every
        self.fallback = fallback
        # In insertion order of the last observation: the first is the one to forget.
        self._series: dict[tuple[str, str], _Series] = {}
        # A step's key (its name and its agent's model) by the step's id, checked by identity: on the
        # hot path of every call, where reading the model from the agent costs more than the rest.
        self._keys: dict[int, tuple[Any, Any, tuple[str, str]]] = {}
        self._lock = threading.Lock()
        self._unsaved = 0
        if self.path is not None and self.path.exists():
            self._load(self.path)

    # ------------------------------------------------------------------ learning
    def observe(self, step: Any, usage: MeasuredUsage) -> None:
        """Record one finished call's actual usage (skipped when its cost is unknown)."""
        if usage.cost_usd is None:
            return
        key = self._key(step)
        explicit = usage.cost_source == "explicit"
        with self._lock:
            series = self._series.pop(key, None)  # re-inserted last: the most recently observed
            if series is None:
                series = _Series(self.window, explicit=explicit)
                if self.max_series is not None and len(self._series) >= self.max_series:
                    del self._series[next(iter(self._series))]
            self._series[key] = series
            series.explicit = series.explicit and explicit
            series.add(usage.cost_usd, usage.total_tokens)
            self._unsaved += 1
            due = self.autosave_every is not None and self._unsaved >= self.autosave_every
        if due:
            self.save()

    def stats(self, step: Any) -> LearnedStats | None:
        """What is known of this step and its model, once ``min_samples`` calls were observed."""
        series = self._series.get(self._key(step))
        if series is None:
            return None
        needed = self.min_explicit_samples if series.explicit else self.min_samples
        if len(series.costs) < needed:
            return None
        return self._stats(series)

    def _stats(self, series: _Series) -> LearnedStats:
        found = series.stats
        if found is None:
            with self._lock:
                found = series.stats = LearnedStats(
                    observations=series.observations,
                    cost_usd=_rank(series.sorted_costs, self.quantile),
                    tokens=_rank(series.sorted_tokens, self.quantile),
                    mean_cost_usd=series.total_cost / len(series.costs),
                )
        return found

    def lookup(self, step: Any) -> UsageEstimate | None:
        """The learned estimate, or ``None`` until enough calls were observed."""
        series = self._series.get(self._key(step))
        if series is None:
            return None
        with self._lock:  # runners in other threads may be adding to the window
            count = len(series.costs)
            if count < (self.min_explicit_samples if series.explicit else self.min_samples):
                return None
            at = max(math.ceil(self.quantile * count), 1) - 1  # the nearest rank, as _rank
            cost, tokens = series.sorted_costs[at], series.sorted_tokens[at]
        known = series.estimate
        if known is None or known.cost_usd != cost or known.tokens != tokens:
            known = series.estimate = UsageEstimate(cost_usd=cost, tokens=tokens)
        return known

    def estimate(self, step: Any, data: Any, context: Any) -> UsageEstimate:
        """The learned estimate; before calibration, the fallback's (the default heuristic's)."""
        known = self.lookup(step)
        if known is not None:
            return known
        fallback = self.fallback if self.fallback is not None else default_heuristic()
        return fallback.estimate(step, data, context)

    def _key(self, step: Any) -> tuple[str, str]:
        agent = getattr(step, "agent", None)
        known = self._keys.get(id(step))
        if known is not None and known[0] is step and known[1] is agent:
            return known[2]
        key = _key(step)
        if len(self._keys) >= _MAX_KEYS:
            self._keys.clear()  # steps made per request: start over rather than grow
        self._keys[id(step)] = (step, agent, key)
        return key

    def clear(self) -> None:
        """Forget everything observed (a saved file is left as it is)."""
        with self._lock:
            self._series.clear()
            self._keys.clear()
            self._unsaved = 0

    # --------------------------------------------------------------- persistence
    def save(self, path: str | Path | None = None) -> Path:
        """Write every window to ``path`` (default: the constructor's) atomically; returns the path."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ConfigError("LearningEstimator.save: no path given here or to the constructor")
        with self._lock:
            document = {
                "format": _FORMAT,
                "series": [
                    {
                        "step": step,
                        "model": model,
                        "observations": s.observations,
                        "cost_usd": [str(c) for c in s.costs],
                        "tokens": list(s.tokens),
                    }
                    for (step, model), s in sorted(self._series.items())
                ],
            }
            self._unsaved = 0
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return target

    def _load(self, path: Path) -> None:
        try:
            document = _LearnedFile.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise ConfigError(f"{path}: not a learned-estimates file this version can read: {exc}") from None
        for entry in document.series:
            if len(entry.cost_usd) != len(entry.tokens):
                raise ConfigError(
                    f"{path}: series {entry.step!r}/{entry.model!r} has unequal cost and token lists"
                )
            series = self._series[(entry.step, entry.model)] = _Series(self.window)
            for cost, tokens in zip(entry.cost_usd, entry.tokens, strict=True):
                series.add(cost, tokens)
            series.observations = max(entry.observations, len(entry.cost_usd))


_learner: LearningEstimator | None = None


def default_learner() -> LearningEstimator:
    """The process's in-memory ``LearningEstimator``, which every ``ExecutorCore`` learns with unless
    given another (or ``learned=None``). Once a step has run with a model, its runs estimate what it
    really cost before: a step whose agent reports its own cost after one call, a priced one after
    five (until then its price bounds it). Its windows hold the latest 20 calls of at most 1,000
    (step, model) pairs; ``clear()`` forgets them."""
    global _learner
    if _learner is None:
        with _default_lock:
            if _learner is None:
                _learner = LearningEstimator(
                    min_samples=5, min_explicit_samples=1, window=20, max_series=1000
                )
    return _learner


def _key(step: Any) -> tuple[str, str]:
    found = agent_model(getattr(step, "agent", None))
    if found is None:
        return str(getattr(step, "name", "")), ""
    model, provider = found
    return str(getattr(step, "name", "")), f"{provider}:{model}" if provider else model


def _rank(ordered: list[_N], quantile: float) -> _N:
    """Nearest-rank quantile of a sorted non-empty list: always a value that really occurred."""
    return ordered[max(math.ceil(quantile * len(ordered)), 1) - 1]


class _SeriesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: str
    model: str
    observations: Annotated[int, Field(ge=0)]
    cost_usd: list[Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]]
    tokens: list[Annotated[int, Field(ge=0)]]


class _LearnedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["paymaster-learned-estimates/1"]
    series: list[_SeriesFile]
