"""The pricing processor for traces: read GenAI usage from spans, price it, attribute it, plan the charge.

``TraceProcessor.process`` walks one parsed export and returns a ``TracePlan``: the ledger batch (one
item per span to charge, one group per distinct scopes, model and quarter hour; see ``_groups``) and
what was counted. With ``enrich`` it also sets ``gen_ai.usage.cost`` (USD, a double) and
``gen_ai.usage.cost.source`` on each span it priced, for the exporter downstream.

Which spans are GenAI usage: those with input or output token counts (current or deprecated names).
Spans that only carry a cost (the SDK's run, loop and parallel spans, which sum their children) are
not usage and are never charged. A span with ``paymaster.cost_usd`` (the SDK's exact cost) keeps it.
A span with ``paymaster.reservation_id`` is the SDK's to charge, never this receiver's (counted ``sdk``;
docs/otlp.md, "Who charges a span"). A span it charges that carries ``paymaster.request_budget`` is
charged to that request budget as well (its group names it, with the resource's ``service.name``).

This is the receiver's hot path. It works a column at a time (``_columns``): for each attribute, one
pass over the spans of a scope in C over the raw attribute maps of ``_view``, so the cost per span is
a few hash probes rather than a few dozen Python statements. Names no span carries (the SDK's cost and
reservation, ``paymaster.*`` scopes, cache and reasoning counts) are ruled out from the export's bytes,
which the receiver passes along, instead of probing every span for each. Each span's raw provider,
model and scope attributes resolve, once per distinct combination and resource, to a cached ``Target``
(its price and scopes), which also assigns its group. Only spans that need it (cache or reasoning
counts, a bad value, a price that is not per-token) take a per-span path. Decoded
values, prices, resources and targets are cached.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from itertools import compress, repeat
from operator import add, attrgetter, floordiv, mul
from typing import Any

from collector_processor.domain.requests import check_request_id
from collector_processor.domain.types import UsageGroup, UsageItem
from collector_processor.errors import InvalidRequestError
from collector_processor.otlp._columns import Cache, Columns, Presence
from collector_processor.otlp._groups import Groups, Target
from collector_processor.otlp._view import INVALID, decode_int, decode_str
from collector_processor.otlp.attribution import Attributor, ResourceScopes
from collector_processor.otlp.pricing import ModelPrice, SpanPricer, femto_ceiling
from collector_processor.otlp.semconv import (
    CACHE_CREATION,
    CACHE_READ,
    INPUT,
    MODEL,
    OUTPUT,
    PROVIDER,
    REASONING,
    REQUEST_BUDGET,
    RESERVATION,
    SDK_COST,
)
from collector_processor.otlp.spend_source import Service, SpendSource

__all__ = ["TracePlan", "TraceProcessor", "WindowPolicy"]

_ZERO = b"\x18\x00"  # an encoded AnyValue int 0: what an absent count reads as
_NONE = b""
_FEMTO_PER_MICRO = 10**9
_ID_LENGTH = {24}  # trace id + span id
_MAX_PROBLEMS = 5
_MAX_SPAN_USD = Decimal(1_000_000)  # an SDK cost above this is not a cost
# Targets cached: per resource and set of span-level scope attributes, per distinct raw values.
_MAX_TARGET_TABLES = 64
_MAX_TARGETS = 8192
_ATTRIBUTES = attrgetter("attributes")
_END = attrgetter("end_time_unix_nano")
_TRACE_ID = attrgetter("trace_id")
_SPAN_ID = attrgetter("span_id")
_SOURCE = attrgetter("source")


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowPolicy:
    """Which span times may be charged."""

    oldest_ms: int
    """Spans that ended before this are older than the idempotency window: not charged (``stale``)."""
    newest_ms: int
    """Spans that end after this carry a wrong clock: not charged (``invalid``)."""


@dataclass(kw_only=True, slots=True)
class TracePlan:
    """What to charge for one export, and what was counted on the way."""

    groups: list[UsageGroup] = field(default_factory=list)
    """The ledger batch's groups."""
    unattributed: list[bool] = field(default_factory=list)
    """Per group: charged to the unattributed bucket."""
    items: list[UsageItem] = field(default_factory=list)
    """One per span to charge."""
    spans: int = 0
    """Spans in the export."""
    genai: int = 0
    """Spans with GenAI token usage."""
    priced: Counter[str] = field(default_factory=Counter)
    """GenAI spans by cost source."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """GenAI spans settled without charging: sdk, unpriced, invalid, skipped, stale."""
    problems: list[str] = field(default_factory=list)
    """The first few reasons spans could not be charged, for the partial-success message."""
    services: set[Service] = field(default_factory=set)
    """Services that sent GenAI spans in this export."""
    trust_cost: bool = True
    """Whether a cost the span carries (``paymaster.cost_usd``) is believed; otherwise every span is
    priced from its tokens (the sender's principal is not granted ``trust_reported_cost``)."""

    def problem(self, span: Any, message: str) -> None:
        self.outcomes["invalid"] += 1
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(f"span {span.trace_id.hex()}/{span.span_id.hex()}: {message}")


class _Batch:
    """One scope's GenAI spans on their way to the ledger, as parallel columns (one entry per span)."""

    __slots__ = ("columns", "counts", "ends", "femto", "first_end", "last_end", "spans", "targets", "tin",
                 "tout", "uids")  # fmt: skip

    def __init__(self, spans: list[Any]) -> None:
        self.spans = spans
        self.columns = Columns(list(map(_ATTRIBUTES, spans)))
        self.tin: list[int] = []
        self.tout: list[int] = []
        self.counts: list[list[int]] = []
        """Cache read, cache creation and reasoning tokens; empty when all are zero."""
        self.ends: list[int] = []
        """End times, epoch ms."""
        self.first_end = self.last_end = 0
        self.uids: list[bytes] = []
        """Trace id + span id."""
        self.targets: list[Target] = []
        self.femto: list[int | None] = []
        """Cost in femto-dollars; ``None`` when unknown."""

    def read_times(self) -> None:
        """Read each span's end time and ids, the ledger item's key."""
        spans = self.spans
        self.ends = list(map(floordiv, map(_END, spans), repeat(1_000_000)))
        self.uids = list(map(add, map(_TRACE_ID, spans), map(_SPAN_ID, spans)))
        self.first_end, self.last_end = min(self.ends), max(self.ends)

    def keep(self, selectors: list[bool]) -> bool:
        """Drop the spans ``selectors`` does not keep; ``False`` when none is left."""
        if all(selectors):
            return True
        if not any(selectors):
            return False
        for name in ("spans", "tin", "tout", "ends", "uids", "targets", "femto"):
            column = getattr(self, name)
            if column:
                setattr(self, name, list(compress(column, selectors)))
        self.columns = self.columns.select(selectors)
        self.counts = [list(compress(c, selectors)) for c in self.counts]
        if self.ends:
            self.first_end, self.last_end = min(self.ends), max(self.ends)
        return True

    def add_items(self, ids: list[int], items: list[UsageItem]) -> None:
        """Append the ledger items of the spans left, every one of them priced, to ``items``."""
        # Rounded up to whole micro-dollars: ceil(f / d) == (f + d - 1) // d for every integer f.
        micros = map(floordiv, map(add, self.femto, repeat(_FEMTO_PER_MICRO - 1)), repeat(_FEMTO_PER_MICRO))  # type: ignore[arg-type]
        zeros = repeat(0)
        cache_read, cache_creation, reasoning = self.counts if self.counts else (zeros, zeros, zeros)
        items.extend(
            zip(self.ends, self.uids, ids, micros, self.tin, self.tout, cache_read, cache_creation, reasoning,
                zeros, strict=False)
        )  # fmt: skip


class TraceProcessor:
    """Turns parsed exports into ledger plans; one per receiver, reused across exports."""

    def __init__(
        self,
        *,
        pricer: SpanPricer,
        attributor: Attributor,
        spend_source: SpendSource,
        max_tokens: int,
    ) -> None:
        self._pricer = pricer
        self._attributor = attributor
        self._spend_source = spend_source
        self._max_tokens = max_tokens
        self._tokens = Cache(self._count_of, 262_144)
        self._prices = Cache(self._price_of, 4096)
        self._sdk_costs = Cache(self._sdk_cost_of, 65_536)
        self._claims = Cache(_is_claim, 65_536)
        self._request_ids = Cache(_request_id, 65_536)
        self._target_tables = Cache(self._target_table, _MAX_TARGET_TABLES)
        """(resource, names of the span attributes that override it) -> its ``_target_table``."""

    def process(
        self,
        request: Any,
        window: WindowPolicy,
        *,
        enrich: bool,
        payload: bytes | None = None,
        trust_cost: bool = True,
    ) -> TracePlan:
        """Plan the charge for ``request`` (a ``TraceRequestView``); with ``enrich``, set the cost attributes.
        ``payload``, the bytes ``request`` was parsed from, lets names no span carries be ruled out at once.
        Without ``trust_cost``, costs carried on spans are ignored and every span is priced from its tokens."""
        plan = TracePlan(trust_cost=trust_cost)
        plan.spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        presence = Presence(payload, plan.spans)
        groups = Groups()
        for resource_spans in request.resource_spans:
            context = self._attributor.for_resource(resource_spans.resource.attributes)
            charge_spans = self._spend_source.spans_charged(context.service)
            genai_before = plan.genai
            for scope_spans in resource_spans.scope_spans:
                spans = scope_spans.spans
                if spans:
                    self._scope(spans, context, charge_spans, window, enrich, plan, groups, presence)
            if plan.genai > genai_before:
                plan.services.add(context.service)
        plan.groups, plan.unattributed = groups.finish()
        return plan

    # -- one scope's spans, a column at a time ---------------------------------------------------
    def _scope(
        self, spans: Any, context: ResourceScopes, charge_spans: bool, window: WindowPolicy, enrich: bool,
        plan: TracePlan, groups: Groups, presence: Presence,
    ) -> None:  # fmt: skip
        batch = self._usage(spans, window, plan, presence)
        if batch is None:
            return
        batch.targets = targets = self._targets(batch.columns, context, presence)
        distinct = dict.fromkeys(targets)
        femto, sources = self._costs(batch, distinct, presence, trust_cost=plan.trust_cost)
        if sources is None:  # each span's source is its target's
            kinds = {t.source for t in distinct}
            if len(kinds) == 1:
                plan.priced[kinds.pop()] += len(targets)
            else:
                plan.priced.update(map(_SOURCE, targets))
            sources = list(map(_SOURCE, targets)) if enrich else []
        else:
            plan.priced.update(sources)
        if enrich:
            batch.columns.set_costs(femto, sources)
        batch.femto = femto
        charge = [f is not None for f in femto] if None in femto else [True] * len(femto)
        claims = batch.columns.optional((RESERVATION,), presence)
        if claims is not None:
            charge = self._leave_to_sdk(claims, charge, plan)
        elif not all(charge):
            plan.outcomes["unpriced"] += charge.count(False)
        if not charge_spans:
            plan.outcomes["skipped"] += charge.count(True)
            return
        if batch.first_end < window.oldest_ms:
            stale = [end < window.oldest_ms for end in batch.ends]
            plan.outcomes["stale"] += sum(s and c for s, c in zip(stale, charge, strict=True))
            charge = [c and not s for c, s in zip(charge, stale, strict=True)]
        if not all(charge):
            if not batch.keep(charge):
                return
            distinct = dict.fromkeys(batch.targets)
        raw_requests = batch.columns.optional((REQUEST_BUDGET,), presence)
        requests = None if raw_requests is None else [self._request_ids[r] if r else "" for r in raw_requests]
        if requests is None or not any(requests):
            ids = groups.ids(batch.targets, distinct, batch.ends, batch.first_end, batch.last_end)
        else:
            ids = groups.ids_with_requests(batch.targets, batch.ends, requests, context.service[1] or "")
        batch.add_items(ids, plan.items)

    def _usage(self, spans: Any, window: WindowPolicy, plan: TracePlan, presence: Presence) -> _Batch | None:
        """The scope's GenAI spans with their usable token counts, times and ids (``None``: none)."""
        batch = _Batch(list(spans))
        raw_in, raw_out = batch.columns.column(INPUT, None), batch.columns.column(OUTPUT, None)
        # all() first: in C, a value is falsy only when absent (None) or empty (b"", rare)
        complete = (all(raw_in) and all(raw_out)) or (None not in raw_in and None not in raw_out)
        presence.counts_read(2 * len(raw_in) - (0 if complete else raw_in.count(None) + raw_out.count(None)))
        if not complete:
            keep = [x is not None or y is not None for x, y in zip(raw_in, raw_out, strict=True)]
            if not batch.keep(keep):
                return None
            raw_in = [_ZERO if x is None else x for x in compress(raw_in, keep)]
            raw_out = [_ZERO if x is None else x for x in compress(raw_out, keep)]
        plan.genai += len(batch.spans)
        batch.tin = list(map(self._tokens.__getitem__, raw_in))
        batch.tout = list(map(self._tokens.__getitem__, raw_out))
        if presence.only_counts():
            extras: list[list[bytes | None] | None] = [None, None, None]
        else:
            columns = batch.columns
            extras = [columns.optional(names, presence) for names in (CACHE_READ, CACHE_CREATION, REASONING)]
        batch.read_times()
        usable = (
            min(batch.tin) >= 0 and min(batch.tout) >= 0 and batch.first_end > 0
            and batch.last_end <= window.newest_ms
        )  # fmt: skip
        if usable and not any(extras) and set(map(len, batch.uids)) == _ID_LENGTH:
            return batch
        usage = self._usages(batch, extras, window, plan)
        keep = [u is not None for u in usage]
        if not batch.keep(keep):
            return None
        batch.tin, batch.tout, *counts = (list(c) for c in zip(*compress(usage, keep), strict=True))
        if any(map(any, counts)):  # all zero: priced like plain usage
            batch.counts = counts
        return batch

    def _costs(
        self, batch: _Batch, distinct: dict[Target, None], presence: Presence, *, trust_cost: bool
    ) -> tuple[list[int | None], list[str] | None]:
        """Femto-dollars (``None`` when unknown) and the cost source of each span; sources ``None``:
        every span is priced at its target's per-token rates, so its source is its target's."""
        targets, tin, tout, extras = batch.targets, batch.tin, batch.tout, batch.counts
        sdk = batch.columns.optional((SDK_COST,), presence) if trust_cost else None
        if sdk is None and not extras and all(t.linear for t in distinct):
            if len(distinct) == 1:
                first = targets[0]
                rates_in: Any = repeat(first.rate_input)
                rates_out: Any = repeat(first.rate_output)
            else:  # a few models and scopes, all priced per token
                rates_in = map({t: t.rate_input for t in distinct}.__getitem__, targets)
                rates_out = map({t: t.rate_output for t in distinct}.__getitem__, targets)
            return list(map(add, map(mul, tin, rates_in), map(mul, tout, rates_out))), None
        femto: list[int | None] = []
        sources: list[str] = []
        zeros = repeat(0)
        read, creation, reasoning = extras if extras else (zeros, zeros, zeros)
        cost_femto = self._pricer.cost_femto
        for i, (target, a, b, c, d, e) in enumerate(
            zip(targets, tin, tout, read, creation, reasoning, strict=False)
        ):
            if sdk is not None and sdk[i] is not None and (exact := self._sdk_costs[sdk[i]]) is not None:
                femto.append(exact)
                sources.append("sdk")
                continue
            price = target.price
            cost = cost_femto(price, a, b, c, d, e)
            femto.append(cost)
            sources.append(price.source if cost is not None else "unknown")
        return femto, sources

    def _targets(self, columns: Columns, context: ResourceScopes, presence: Presence) -> list[Target]:
        """Each span's ``Target``, from its raw provider, model and scope overrides (cached per distinct
        combination of them, per resource)."""
        hits = tuple(name for name, _ in context.checks if presence.may_have(name) and columns.has(name))
        raw = zip(
            columns.column(PROVIDER, _NONE),
            columns.column(MODEL, _NONE),
            *(columns.column((name,), None) for name in hits),
            strict=True,
        )
        return list(map(self._target_tables[(context, hits)].__getitem__, raw))

    def _target_table(self, key: tuple[ResourceScopes, tuple[str, ...]]) -> Cache:
        """Raw (provider, model, *values of ``hits``) -> the span's ``Target``, for resource ``context``."""
        context, hits = key
        return Cache(partial(self._target_of, context, hits), _MAX_TARGETS)

    def _target_of(
        self, context: ResourceScopes, hits: tuple[str, ...], raw: tuple[bytes | None, ...]
    ) -> Target:
        price = self._prices[raw[:2]]
        if not hits:
            return Target(price, context.default, context.default_unattributed)
        scopes, unattributed = context.resolve(dict(zip(hits, raw[2:], strict=True)))
        return Target(price, scopes, unattributed)

    def _leave_to_sdk(self, claims: list[bytes | None], priced: list[bool], plan: TracePlan) -> list[bool]:
        """Which spans to charge: priced ones that carry no ``paymaster.reservation_id``. A span that
        carries one is the SDK's to charge (its commit, its lease's, or its replayed journal) and is
        counted ``sdk`` whatever its price; the receiver does nothing with the id itself."""
        claimed = [raw is not None and self._claims[raw] for raw in claims]
        plan.outcomes["sdk"] += claimed.count(True)
        charge = [p and not c for p, c in zip(priced, claimed, strict=True)]
        plan.outcomes["unpriced"] += sum(not p and not c for p, c in zip(priced, claimed, strict=True))
        return charge

    # -- the per-span path -----------------------------------------------------------------------
    def _usages(
        self, batch: _Batch, extras: list[list[bytes | None] | None], window: WindowPolicy, plan: TracePlan
    ) -> list[tuple[int, int, int, int, int] | None]:
        """Inclusive, consistent token counts of each span; ``None`` (counted invalid) when unusable."""
        names = (CACHE_READ, CACHE_CREATION, REASONING)
        tin, tout, ends, uids = batch.tin, batch.tout, batch.ends, batch.uids
        columns = [[self._tokens[r] if r is not None else 0 for r in c] if c else None for c in extras]
        out: list[tuple[int, int, int, int, int] | None] = []
        for i, span in enumerate(batch.spans):
            counts = [tin[i], tout[i]] + [c[i] if c is not None else 0 for c in columns]
            bad = next((n for n, v in zip((INPUT, OUTPUT, *names), counts, strict=True) if v < 0), None)
            if bad is not None:
                plan.problem(span, f"{bad[0]}: {self._problem(span, bad)}")
                out.append(None)
                continue
            if len(uids[i]) != 24 or ends[i] <= 0 or ends[i] > window.newest_ms:
                plan.problem(span, _unusable(ends[i], len(uids[i])))
                out.append(None)
                continue
            a, b, read, creation, reasoning = counts
            # Some instrumentations report cached and reasoning tokens outside the input and output
            # counts (as Anthropic's and Gemini's APIs do); counts here are inclusive, so add them in.
            if read + creation > a:
                a += read + creation
            if reasoning > b:
                b += reasoning
            out.append((a, b, read, creation, reasoning))
        return out

    def _problem(self, span: Any, names: tuple[str, ...]) -> str:
        attributes = span.attributes
        for name in names:
            if name in attributes:
                return self._check_count(attributes[name])[1]
        return "unreadable"

    def _count_of(self, raw: bytes) -> int:
        """A token count, or -1 when the value is not one (``_check_count`` says why)."""
        return self._check_count(raw)[0]

    def _check_count(self, raw: bytes) -> tuple[int, str]:
        value = decode_int(raw)
        if value is INVALID or value is None:
            return -1, "must be an integer token count"
        assert isinstance(value, int)
        if value < 0:
            return -1, f"must not be negative, got {value}"
        if value > self._max_tokens:
            return (
                -1,
                f"{value} exceeds the most one call may report ({self._max_tokens}, pricing.max_tokens_per_span)",
            )
        return value, ""

    def _price_of(self, key: tuple[bytes, bytes]) -> ModelPrice:
        raw_provider, raw_model = key
        provider = decode_str(raw_provider) if raw_provider else ""
        model = decode_str(raw_model) if raw_model else ""
        if not isinstance(provider, str):
            provider = ""
        if not isinstance(model, str) or not model.strip():
            return ModelPrice(
                provider="", model="", source="unknown", rates=None, reason="the span names no model"
            )
        return self._pricer.model(provider, model.strip())

    def _sdk_cost_of(self, raw: bytes) -> int | None:
        """The SDK's exact cost string in femto-dollars (rounded up); ``None`` when it is not one."""
        text = decode_str(raw)
        if not isinstance(text, str):
            return None
        try:
            exact = Decimal(text)
        except ArithmeticError:
            return None
        if not exact.is_finite() or not 0 <= exact <= _MAX_SPAN_USD:
            return None
        return femto_ceiling(exact)


def _unusable(end_ms: int, id_bytes: int) -> str:
    if id_bytes != 24:
        return "trace_id or span_id is missing or malformed"
    if end_ms <= 0:
        return "end_time_unix_nano is not set"
    return "ends in the future (check the clock of the sending host)"


def _request_id(raw: bytes) -> str:
    """A raw ``paymaster.request_budget`` value as an id, or '' when it is not one (the span is then
    charged to its scopes only, like a span that names none)."""
    value = decode_str(raw)
    if not isinstance(value, str):
        return ""
    try:
        return check_request_id(value)
    except InvalidRequestError:
        return ""


def _is_claim(raw: bytes) -> bool:
    """Whether a raw ``paymaster.reservation_id`` value claims its span for the SDK: any non-empty string."""
    value = decode_str(raw)
    return isinstance(value, str) and value != ""
