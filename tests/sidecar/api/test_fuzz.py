"""Fuzzing every RPC of the budget API on a real sidecar, on both stores: no request, however strange,
is answered INTERNAL or UNKNOWN, no refusal carries an outsized message, and the server is healthy after.

Requests are drawn from the proto descriptors (``paymaster/v1/budget.proto``): each field of each
request message gets values of its type, from ordinary ones (the ids, scopes, amounts and periods of
the budgets the sidecar holds, so that requests reach the ledger and the store) to hostile ones
(megabyte and non-ASCII strings, int64 and uint64 extremes, unknown enum values, nested messages and
repeated fields), and besides well-formed messages, raw bytes: random ones and mutated serializations.

The example count is small enough for the suite (``PAYMASTER_FUZZ_EXAMPLES`` raises it) and the
examples are derandomized, so a failure reproduces; set ``PAYMASTER_FUZZ_SEED`` to explore others.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from paymaster.v1 import budget_pb2 as pb
from tests.sidecar.conftest import RunningSidecar, StoreFactory, pb_budget, start_sidecar

SERVICE = pb.DESCRIPTOR.services_by_name["BudgetService"]
EXAMPLES = int(os.environ.get("PAYMASTER_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("PAYMASTER_FUZZ_SEED")
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
MAX_REQUEST = 4 * 1024 * 1024
"""gRPC's default limit on a received message."""
MAX_DETAILS = 1024
"""The longest refusal message: it quotes at most about 80 characters of any value."""

# Values the sidecar knows, so that drawn requests reach budgets, reservations and spend.
BUDGET_IDS = ["org", "team", "per-user", "rolling", "tiny"]
SCOPE_IDS = ["acme", "search", "ada", "bob", "digest", "summarizer"]
AMOUNTS = ["0", "0.5", "1", "9.999999", "1e-1000000000", "1000000", "1000000.000001", "1e9", "1e400",
           "-1", "1_000", "\u0661", "\uff15", "NaN", "inf", " 1", "0x1", "1e99999999999999999999"]  # fmt: skip
PERIODS = ["daily", "weekly", "monthly", "quarterly", "yearly", "rolling_1h", "rolling_366d", "rolling_0m",
           "rolling_99999999999999999999d"]  # fmt: skip
ZONES = ["UTC", "Europe/Berlin", "America/St_Johns", "Asia/Kathmandu", "Mars/Base", "../etc", "\x00", "/"]
KNOWN = st.sampled_from(BUDGET_IDS + SCOPE_IDS + AMOUNTS + PERIODS + ZONES + ["", "b-x", "r-1"])
INT64 = (-(2**63), 2**63 - 1)
EXTREMES = {
    FieldDescriptor.TYPE_INT64: [*INT64, -1, 0, 1, 2**53 + 1, 10**12, 10**12 + 1, -(2**62), 2**62],
    FieldDescriptor.TYPE_UINT64: [0, 1, 2**63 - 1, 2**63, 2**64 - 1],
    FieldDescriptor.TYPE_INT32: [-(2**31), 2**31 - 1, -1, 0, 1, 50, 500, 501],
    FieldDescriptor.TYPE_UINT32: [0, 1, 80, 100, 1000, 1001, 2**32 - 1],
}
RANGES = {
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
}
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # protobuf strings are UTF-8


def huge_strings() -> st.SearchStrategy[str]:
    return st.builds(
        lambda ch, n, head: head + ch * n,
        st.sampled_from(["9", "x", "é", "\U0001f4b8", " ", "\x00", "/"]),
        st.sampled_from([257, 4096, 100_000, 1_000_000]),
        st.sampled_from(["", "1", "acme", "rolling_"]),
    )


def field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """Values for one (non-repeated) field of the field's type."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(KNOWN, TEXT, huge_strings())
    if kind in RANGES:
        low, high = RANGES[kind]
        return st.one_of(st.sampled_from(EXTREMES[kind]), st.integers(low, high))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    raise AssertionError(f"the fuzzer has no strategy for {field.full_name} (type {kind})")


@st.composite
def _message(draw: st.DrawFn, descriptor: Descriptor, depth: int) -> Any:
    out = _classes[descriptor.full_name]()
    for field in descriptor.fields:
        if depth > 3 or not draw(st.booleans()):
            continue  # absent (or the type's default)
        if field.is_repeated:
            values = draw(st.lists(field_values(field, depth), max_size=4))
            target = getattr(out, field.name)
            for value in values:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    target.add().CopyFrom(value)
                else:
                    target.append(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(out, field.name).CopyFrom(draw(field_values(field, depth)))
        else:
            setattr(out, field.name, draw(field_values(field, depth)))
    return out


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    return _message(descriptor, depth)


def _all_classes() -> dict[str, Any]:
    from google.protobuf import duration_pb2, timestamp_pb2

    found: dict[str, Any] = {
        "google.protobuf.Timestamp": timestamp_pb2.Timestamp,
        "google.protobuf.Duration": duration_pb2.Duration,
    }
    for name in pb.DESCRIPTOR.message_types_by_name:
        found[f"paymaster.v1.{name}"] = getattr(pb, name)
    return found


_classes = _all_classes()


@st.composite
def corrupt(draw: st.DrawFn, descriptor: Descriptor) -> bytes:
    """Random bytes, or a drawn request's serialization truncated, extended or with bytes flipped."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    data = bytearray(draw(messages(descriptor)).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "cut", "append"]))
        if how == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif how == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        else:
            data += draw(st.binary(min_size=1, max_size=12))
    return bytes(data)


# -- the server ------------------------------------------------------------------------------------
@pytest.fixture
def fuzzed(backing: StoreFactory, clock: Any) -> Iterator[RunningSidecar]:
    """A sidecar with budgets of every kind, a held reservation and some spend, for the fuzzer to hit."""
    running = start_sidecar(backing, clock)
    stub = running.stub
    stub.CreateBudget(pb_budget("org", pb.SCOPE_ORGANIZATION, "acme", "100", thresholds=(50, 100)))
    stub.CreateBudget(pb_budget("team", pb.SCOPE_TEAM, "search", "10", on_exceed=pb.ON_EXCEED_DOWNGRADE))
    stub.CreateBudget(pb_budget("per-user", pb.SCOPE_USER, None, "5", on_exceed=pb.ON_EXCEED_WARN))
    stub.CreateBudget(
        pb_budget("rolling", pb.SCOPE_AGENT, "summarizer", "3", period="rolling_1h", thresholds=(80,))
    )
    stub.CreateBudget(pb_budget("tiny", pb.SCOPE_WORKFLOW, "digest", "0"))
    scopes = pb.ScopeIds(organization="acme", team="search", user="ada", agent="summarizer")
    first = stub.Reserve(pb.ReserveRequest(scopes=scopes, estimate_usd="1"))
    stub.Commit(pb.CommitRequest(reservation_id=first.reservation_id, actual_usd="0.9"))
    stub.Reserve(pb.ReserveRequest(scopes=scopes, estimate_usd="0.5", idempotency_key="r-1"))
    stub.RecordUsage(pb.RecordUsageRequest(usage_id="u-1", scopes=scopes, cost_usd="2"))
    yield running
    running.channel.close()
    running.sidecar.stop(0)


def check(server: RunningSidecar, method: Any, call: Any, size: int) -> None:
    """Run ``call`` (of a request of ``size`` bytes); the answer may be anything but INTERNAL or
    UNKNOWN, and a refusal is short."""
    try:
        result = call()
        if method.server_streaming:
            list(result)
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""  # type: ignore[attr-defined]
        assert code not in NEVER, (method.name, code, details[:500])
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            assert method.server_streaming, (method.name, details[:500])  # a watch waits for alerts
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # Only gRPC's own limit on a request's size (4 MiB); never an outsized refusal message.
            assert size > MAX_REQUEST and "larger than max" in details, (method.name, details[:500])
        assert len(details) <= MAX_DETAILS, (method.name, code, len(details), details[:200])


def call_of(server: RunningSidecar, method: Any, request: bytes) -> Any:
    path = f"/{SERVICE.full_name}/{method.name}"
    if method.server_streaming:
        return lambda: server.channel.unary_stream(path)(request, timeout=0.3)
    return lambda: server.channel.unary_unary(path)(request, timeout=30)


def assert_healthy(server: RunningSidecar) -> None:
    """Health says SERVING, and a new budget is created, reserved against and reported."""
    health = health_pb2_grpc.HealthStub(server.channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    server.stub.CreateBudget(pb_budget("after-fuzz", pb.SCOPE_USER, "after-fuzz", "1"), timeout=10)
    scopes = pb.ScopeIds(user="after-fuzz")
    r = server.stub.Reserve(pb.ReserveRequest(scopes=scopes, estimate_usd="0.25"), timeout=10)
    assert (r.decision, r.reserved_usd) == (pb.DECISION_ALLOW, "0.250000")
    server.stub.Commit(pb.CommitRequest(reservation_id=r.reservation_id, actual_usd="0.2"), timeout=10)
    usage = server.stub.GetUsage(pb.GetUsageRequest(scopes=scopes), timeout=10)
    assert (usage.total.cost_usd, usage.total.records) == ("0.200000", 1)


def fuzz_settings() -> Any:
    return settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=SEED is None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def _seeded(test: Any) -> Any:
    return seed(int(SEED))(test) if SEED is not None else test


# -- the tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_no_well_formed_request_is_answered_internal(fuzzed: RunningSidecar, method: Any) -> None:
    @_seeded
    @fuzz_settings()
    @given(request=messages(method.input_type))
    def run(request: Any) -> None:
        data = request.SerializeToString()
        check(fuzzed, method, call_of(fuzzed, method, data), len(data))

    run()
    assert_healthy(fuzzed)


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_no_corrupt_request_is_answered_internal(fuzzed: RunningSidecar, method: Any) -> None:
    @_seeded
    @fuzz_settings()
    @given(data=corrupt(method.input_type))
    def run(data: bytes) -> None:
        check(fuzzed, method, call_of(fuzzed, method, data), len(data))

    run()
    assert_healthy(fuzzed)


def test_the_fuzzer_can_draw_every_field_of_every_request() -> None:
    """A field of a type the fuzzer has no values for fails here, not silently."""
    seen: set[int] = set()

    def walk(descriptor: Descriptor, depth: int = 0) -> None:
        assert descriptor.full_name in _classes, descriptor.full_name
        for field in descriptor.fields:
            seen.add(field.type)
            field_values(field, depth)  # raises for a type without a strategy
            if field.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
                walk(field.message_type, depth + 1)

    for method in SERVICE.methods:
        walk(method.input_type)
    assert seen >= {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_ENUM, FieldDescriptor.TYPE_INT64,
                    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_MESSAGE}  # fmt: skip
