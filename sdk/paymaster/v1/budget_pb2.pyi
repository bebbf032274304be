# DO NOT EDIT: generated from proto/paymaster/v1/budget.proto by `python -m collector_processor.api.protogen`.
import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_UNSPECIFIED: _ClassVar[Scope]
    SCOPE_ORGANIZATION: _ClassVar[Scope]
    SCOPE_TEAM: _ClassVar[Scope]
    SCOPE_AGENT: _ClassVar[Scope]
    SCOPE_WORKFLOW: _ClassVar[Scope]
    SCOPE_USER: _ClassVar[Scope]
    SCOPE_REQUEST: _ClassVar[Scope]

class OnExceed(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_EXCEED_UNSPECIFIED: _ClassVar[OnExceed]
    ON_EXCEED_WARN: _ClassVar[OnExceed]
    ON_EXCEED_BLOCK: _ClassVar[OnExceed]
    ON_EXCEED_DOWNGRADE: _ClassVar[OnExceed]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_DENY: _ClassVar[Decision]
    DECISION_DOWNGRADE: _ClassVar[Decision]

class ReservationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATE_UNSPECIFIED: _ClassVar[ReservationState]
    RESERVATION_STATE_HELD: _ClassVar[ReservationState]
    RESERVATION_STATE_COMMITTED: _ClassVar[ReservationState]
    RESERVATION_STATE_RELEASED: _ClassVar[ReservationState]
    RESERVATION_STATE_EXPIRED: _ClassVar[ReservationState]

class Dimension(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIMENSION_UNSPECIFIED: _ClassVar[Dimension]
    DIMENSION_ORGANIZATION: _ClassVar[Dimension]
    DIMENSION_TEAM: _ClassVar[Dimension]
    DIMENSION_AGENT: _ClassVar[Dimension]
    DIMENSION_WORKFLOW: _ClassVar[Dimension]
    DIMENSION_USER: _ClassVar[Dimension]
    DIMENSION_PROVIDER: _ClassVar[Dimension]
    DIMENSION_MODEL: _ClassVar[Dimension]
    DIMENSION_DAY: _ClassVar[Dimension]
    DIMENSION_WEEK: _ClassVar[Dimension]
    DIMENSION_MONTH: _ClassVar[Dimension]
    DIMENSION_QUARTER: _ClassVar[Dimension]
    DIMENSION_YEAR: _ClassVar[Dimension]

class AlertKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_KIND_UNSPECIFIED: _ClassVar[AlertKind]
    ALERT_KIND_THRESHOLD: _ClassVar[AlertKind]
SCOPE_UNSPECIFIED: Scope
SCOPE_ORGANIZATION: Scope
SCOPE_TEAM: Scope
SCOPE_AGENT: Scope
SCOPE_WORKFLOW: Scope
SCOPE_USER: Scope
SCOPE_REQUEST: Scope
ON_EXCEED_UNSPECIFIED: OnExceed
ON_EXCEED_WARN: OnExceed
ON_EXCEED_BLOCK: OnExceed
ON_EXCEED_DOWNGRADE: OnExceed
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_DENY: Decision
DECISION_DOWNGRADE: Decision
RESERVATION_STATE_UNSPECIFIED: ReservationState
RESERVATION_STATE_HELD: ReservationState
RESERVATION_STATE_COMMITTED: ReservationState
RESERVATION_STATE_RELEASED: ReservationState
RESERVATION_STATE_EXPIRED: ReservationState
DIMENSION_UNSPECIFIED: Dimension
DIMENSION_ORGANIZATION: Dimension
DIMENSION_TEAM: Dimension
DIMENSION_AGENT: Dimension
DIMENSION_WORKFLOW: Dimension
DIMENSION_USER: Dimension
DIMENSION_PROVIDER: Dimension
DIMENSION_MODEL: Dimension
DIMENSION_DAY: Dimension
DIMENSION_WEEK: Dimension
DIMENSION_MONTH: Dimension
DIMENSION_QUARTER: Dimension
DIMENSION_YEAR: Dimension
ALERT_KIND_UNSPECIFIED: AlertKind
ALERT_KIND_THRESHOLD: AlertKind

class Tier(_message.Message):
    __slots__ = ("at_percent", "action")
    AT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    at_percent: int
    action: OnExceed
    def __init__(self, at_percent: _Optional[int] = ..., action: _Optional[_Union[OnExceed, str]] = ...) -> None: ...

class Tiers(_message.Message):
    __slots__ = ("tiers",)
    TIERS_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[Tier]
    def __init__(self, tiers: _Optional[_Iterable[_Union[Tier, _Mapping]]] = ...) -> None: ...

class ScopeIds(_message.Message):
    __slots__ = ("organization", "team", "agent", "workflow", "user")
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    organization: str
    team: str
    agent: str
    workflow: str
    user: str
    def __init__(self, organization: _Optional[str] = ..., team: _Optional[str] = ..., agent: _Optional[str] = ..., workflow: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("id", "name", "scope", "scope_id", "limit_usd", "period", "time_zone", "on_exceed", "alert_thresholds", "enabled", "declared_in_config", "created_at", "updated_at", "tiers")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    ON_EXCEED_FIELD_NUMBER: _ClassVar[int]
    ALERT_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DECLARED_IN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    scope: Scope
    scope_id: str
    limit_usd: str
    period: str
    time_zone: str
    on_exceed: OnExceed
    alert_thresholds: _containers.RepeatedScalarFieldContainer[int]
    enabled: bool
    declared_in_config: bool
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    tiers: _containers.RepeatedCompositeFieldContainer[Tier]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., scope: _Optional[_Union[Scope, str]] = ..., scope_id: _Optional[str] = ..., limit_usd: _Optional[str] = ..., period: _Optional[str] = ..., time_zone: _Optional[str] = ..., on_exceed: _Optional[_Union[OnExceed, str]] = ..., alert_thresholds: _Optional[_Iterable[int]] = ..., enabled: _Optional[bool] = ..., declared_in_config: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tiers: _Optional[_Iterable[_Union[Tier, _Mapping]]] = ...) -> None: ...

class BudgetInfo(_message.Message):
    __slots__ = ("budget_id", "budget_name", "scope", "scope_id", "used_usd", "reserved_usd", "limit_usd", "remaining_usd", "percentage", "exceeded", "action", "period_start", "period_end", "tier", "tiers")
    BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    USED_USD_FIELD_NUMBER: _ClassVar[int]
    RESERVED_USD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    REMAINING_USD_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    budget_id: str
    budget_name: str
    scope: Scope
    scope_id: str
    used_usd: str
    reserved_usd: str
    limit_usd: str
    remaining_usd: str
    percentage: str
    exceeded: bool
    action: OnExceed
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    tier: Tier
    tiers: _containers.RepeatedCompositeFieldContainer[Tier]
    def __init__(self, budget_id: _Optional[str] = ..., budget_name: _Optional[str] = ..., scope: _Optional[_Union[Scope, str]] = ..., scope_id: _Optional[str] = ..., used_usd: _Optional[str] = ..., reserved_usd: _Optional[str] = ..., limit_usd: _Optional[str] = ..., remaining_usd: _Optional[str] = ..., percentage: _Optional[str] = ..., exceeded: _Optional[bool] = ..., action: _Optional[_Union[OnExceed, str]] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tier: _Optional[_Union[Tier, _Mapping]] = ..., tiers: _Optional[_Iterable[_Union[Tier, _Mapping]]] = ...) -> None: ...

class UsageFacts(_message.Message):
    __slots__ = ("provider", "model", "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "reasoning_tokens")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_CREATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    reasoning_tokens: int
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cache_read_tokens: _Optional[int] = ..., cache_creation_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ...) -> None: ...

class CreateBudgetRequest(_message.Message):
    __slots__ = ("budget",)
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    budget: Budget
    def __init__(self, budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListBudgetsRequest(_message.Message):
    __slots__ = ("scope", "scope_id", "page_size", "page_token")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    scope: Scope
    scope_id: str
    page_size: int
    page_token: str
    def __init__(self, scope: _Optional[_Union[Scope, str]] = ..., scope_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBudgetsResponse(_message.Message):
    __slots__ = ("budgets", "next_page_token")
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    budgets: _containers.RepeatedCompositeFieldContainer[Budget]
    next_page_token: str
    def __init__(self, budgets: _Optional[_Iterable[_Union[Budget, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AlertThresholds(_message.Message):
    __slots__ = ("percent",)
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    percent: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, percent: _Optional[_Iterable[int]] = ...) -> None: ...

class UpdateBudgetRequest(_message.Message):
    __slots__ = ("id", "name", "limit_usd", "on_exceed", "alert_thresholds", "enabled", "tiers")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    ON_EXCEED_FIELD_NUMBER: _ClassVar[int]
    ALERT_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    limit_usd: str
    on_exceed: OnExceed
    alert_thresholds: AlertThresholds
    enabled: bool
    tiers: Tiers
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., limit_usd: _Optional[str] = ..., on_exceed: _Optional[_Union[OnExceed, str]] = ..., alert_thresholds: _Optional[_Union[AlertThresholds, _Mapping]] = ..., enabled: _Optional[bool] = ..., tiers: _Optional[_Union[Tiers, _Mapping]] = ...) -> None: ...

class DeleteBudgetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteBudgetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckBudgetRequest(_message.Message):
    __slots__ = ("scopes", "estimate_usd", "request_budget_id")
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_USD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    scopes: ScopeIds
    estimate_usd: str
    request_budget_id: str
    def __init__(self, scopes: _Optional[_Union[ScopeIds, _Mapping]] = ..., estimate_usd: _Optional[str] = ..., request_budget_id: _Optional[str] = ...) -> None: ...

class CheckBudgetResponse(_message.Message):
    __slots__ = ("decision", "budget_info", "deciding_budget_id", "reason", "warn", "warnings", "deciding_tier")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    BUDGET_INFO_FIELD_NUMBER: _ClassVar[int]
    DECIDING_BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WARN_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    DECIDING_TIER_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    budget_info: _containers.RepeatedCompositeFieldContainer[BudgetInfo]
    deciding_budget_id: str
    reason: str
    warn: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    deciding_tier: Tier
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., budget_info: _Optional[_Iterable[_Union[BudgetInfo, _Mapping]]] = ..., deciding_budget_id: _Optional[str] = ..., reason: _Optional[str] = ..., warn: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ..., deciding_tier: _Optional[_Union[Tier, _Mapping]] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("scopes", "estimate_usd", "estimate_tokens", "ttl", "idempotency_key", "downgrade_estimate_usd", "downgrade_of", "model", "request_budget_id", "service")
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_USD_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DOWNGRADE_ESTIMATE_USD_FIELD_NUMBER: _ClassVar[int]
    DOWNGRADE_OF_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    scopes: ScopeIds
    estimate_usd: str
    estimate_tokens: int
    ttl: _duration_pb2.Duration
    idempotency_key: str
    downgrade_estimate_usd: str
    downgrade_of: str
    model: UsageFacts
    request_budget_id: str
    service: str
    def __init__(self, scopes: _Optional[_Union[ScopeIds, _Mapping]] = ..., estimate_usd: _Optional[str] = ..., estimate_tokens: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., downgrade_estimate_usd: _Optional[str] = ..., downgrade_of: _Optional[str] = ..., model: _Optional[_Union[UsageFacts, _Mapping]] = ..., request_budget_id: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("decision", "reservation_id", "reserved_usd", "expires_at", "budget_info", "deciding_budget_id", "reason", "warn", "warnings", "awaiting_downgrade_estimate", "replayed", "deciding_tier")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVED_USD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_INFO_FIELD_NUMBER: _ClassVar[int]
    DECIDING_BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WARN_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    AWAITING_DOWNGRADE_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    DECIDING_TIER_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    reservation_id: str
    reserved_usd: str
    expires_at: _timestamp_pb2.Timestamp
    budget_info: _containers.RepeatedCompositeFieldContainer[BudgetInfo]
    deciding_budget_id: str
    reason: str
    warn: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    awaiting_downgrade_estimate: bool
    replayed: bool
    deciding_tier: Tier
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., reservation_id: _Optional[str] = ..., reserved_usd: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., budget_info: _Optional[_Iterable[_Union[BudgetInfo, _Mapping]]] = ..., deciding_budget_id: _Optional[str] = ..., reason: _Optional[str] = ..., warn: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ..., awaiting_downgrade_estimate: _Optional[bool] = ..., replayed: _Optional[bool] = ..., deciding_tier: _Optional[_Union[Tier, _Mapping]] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("reservation_id", "actual_usd", "actual_tokens", "usage")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_USD_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    actual_usd: str
    actual_tokens: int
    usage: UsageFacts
    def __init__(self, reservation_id: _Optional[str] = ..., actual_usd: _Optional[str] = ..., actual_tokens: _Optional[int] = ..., usage: _Optional[_Union[UsageFacts, _Mapping]] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("charged_usd", "released_usd", "duplicate", "late", "budget_info")
    CHARGED_USD_FIELD_NUMBER: _ClassVar[int]
    RELEASED_USD_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_INFO_FIELD_NUMBER: _ClassVar[int]
    charged_usd: str
    released_usd: str
    duplicate: bool
    late: bool
    budget_info: _containers.RepeatedCompositeFieldContainer[BudgetInfo]
    def __init__(self, charged_usd: _Optional[str] = ..., released_usd: _Optional[str] = ..., duplicate: _Optional[bool] = ..., late: _Optional[bool] = ..., budget_info: _Optional[_Iterable[_Union[BudgetInfo, _Mapping]]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released_usd", "state")
    RELEASED_USD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    released_usd: str
    state: ReservationState
    def __init__(self, released_usd: _Optional[str] = ..., state: _Optional[_Union[ReservationState, str]] = ...) -> None: ...

class RecordUsageRequest(_message.Message):
    __slots__ = ("usage_id", "scopes", "cost_usd", "total_tokens", "usage", "occurred_at", "reservation_id", "request_budget_id", "service")
    USAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    usage_id: str
    scopes: ScopeIds
    cost_usd: str
    total_tokens: int
    usage: UsageFacts
    occurred_at: _timestamp_pb2.Timestamp
    reservation_id: str
    request_budget_id: str
    service: str
    def __init__(self, usage_id: _Optional[str] = ..., scopes: _Optional[_Union[ScopeIds, _Mapping]] = ..., cost_usd: _Optional[str] = ..., total_tokens: _Optional[int] = ..., usage: _Optional[_Union[UsageFacts, _Mapping]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reservation_id: _Optional[str] = ..., request_budget_id: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ("charged_usd", "duplicate", "budget_info")
    CHARGED_USD_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_INFO_FIELD_NUMBER: _ClassVar[int]
    charged_usd: str
    duplicate: bool
    budget_info: _containers.RepeatedCompositeFieldContainer[BudgetInfo]
    def __init__(self, charged_usd: _Optional[str] = ..., duplicate: _Optional[bool] = ..., budget_info: _Optional[_Iterable[_Union[BudgetInfo, _Mapping]]] = ...) -> None: ...

class GetBudgetStatusRequest(_message.Message):
    __slots__ = ("budget_id", "scope_id", "request_budget_id")
    BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    budget_id: str
    scope_id: str
    request_budget_id: str
    def __init__(self, budget_id: _Optional[str] = ..., scope_id: _Optional[str] = ..., request_budget_id: _Optional[str] = ...) -> None: ...

class BudgetStatus(_message.Message):
    __slots__ = ("budget", "scope_id", "used_usd", "reserved_usd", "remaining_usd", "percentage", "exceeded", "period_start", "period_end", "burn_rate_usd_per_hour", "projected_usd", "alerts_fired", "request")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    USED_USD_FIELD_NUMBER: _ClassVar[int]
    RESERVED_USD_FIELD_NUMBER: _ClassVar[int]
    REMAINING_USD_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    BURN_RATE_USD_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    PROJECTED_USD_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIRED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    budget: Budget
    scope_id: str
    used_usd: str
    reserved_usd: str
    remaining_usd: str
    percentage: str
    exceeded: bool
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    burn_rate_usd_per_hour: str
    projected_usd: str
    alerts_fired: _containers.RepeatedScalarFieldContainer[int]
    request: RequestBudget
    def __init__(self, budget: _Optional[_Union[Budget, _Mapping]] = ..., scope_id: _Optional[str] = ..., used_usd: _Optional[str] = ..., reserved_usd: _Optional[str] = ..., remaining_usd: _Optional[str] = ..., percentage: _Optional[str] = ..., exceeded: _Optional[bool] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., burn_rate_usd_per_hour: _Optional[str] = ..., projected_usd: _Optional[str] = ..., alerts_fired: _Optional[_Iterable[int]] = ..., request: _Optional[_Union[RequestBudget, _Mapping]] = ...) -> None: ...

class OpenRequestBudgetRequest(_message.Message):
    __slots__ = ("id", "name", "parent_id", "limit_usd", "fraction", "tiers", "idle_ttl")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TTL_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    parent_id: str
    limit_usd: str
    fraction: str
    tiers: _containers.RepeatedCompositeFieldContainer[Tier]
    idle_ttl: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., parent_id: _Optional[str] = ..., limit_usd: _Optional[str] = ..., fraction: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[Tier, _Mapping]]] = ..., idle_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ServiceSpend(_message.Message):
    __slots__ = ("service", "used_usd")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    USED_USD_FIELD_NUMBER: _ClassVar[int]
    service: str
    used_usd: str
    def __init__(self, service: _Optional[str] = ..., used_usd: _Optional[str] = ...) -> None: ...

class RequestBudget(_message.Message):
    __slots__ = ("id", "name", "ancestor_ids", "limit_usd", "tiers", "used_usd", "reserved_usd", "remaining_usd", "opened_at", "expires_at", "idle_ttl", "by_service", "clamped")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ANCESTOR_IDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    USED_USD_FIELD_NUMBER: _ClassVar[int]
    RESERVED_USD_FIELD_NUMBER: _ClassVar[int]
    REMAINING_USD_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    IDLE_TTL_FIELD_NUMBER: _ClassVar[int]
    BY_SERVICE_FIELD_NUMBER: _ClassVar[int]
    CLAMPED_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    ancestor_ids: _containers.RepeatedScalarFieldContainer[str]
    limit_usd: str
    tiers: _containers.RepeatedCompositeFieldContainer[Tier]
    used_usd: str
    reserved_usd: str
    remaining_usd: str
    opened_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    idle_ttl: _duration_pb2.Duration
    by_service: _containers.RepeatedCompositeFieldContainer[ServiceSpend]
    clamped: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., ancestor_ids: _Optional[_Iterable[str]] = ..., limit_usd: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[Tier, _Mapping]]] = ..., used_usd: _Optional[str] = ..., reserved_usd: _Optional[str] = ..., remaining_usd: _Optional[str] = ..., opened_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idle_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., by_service: _Optional[_Iterable[_Union[ServiceSpend, _Mapping]]] = ..., clamped: _Optional[bool] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("start", "end", "scopes", "provider", "model", "group_by", "time_zone")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    scopes: ScopeIds
    provider: str
    model: str
    group_by: _containers.RepeatedScalarFieldContainer[Dimension]
    time_zone: str
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scopes: _Optional[_Union[ScopeIds, _Mapping]] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., group_by: _Optional[_Iterable[_Union[Dimension, str]]] = ..., time_zone: _Optional[str] = ...) -> None: ...

class UsageTotals(_message.Message):
    __slots__ = ("cost_usd", "input_tokens", "output_tokens", "total_tokens", "records")
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    cost_usd: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    records: int
    def __init__(self, cost_usd: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., records: _Optional[int] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("key", "totals")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    key: _containers.RepeatedScalarFieldContainer[str]
    totals: UsageTotals
    def __init__(self, key: _Optional[_Iterable[str]] = ..., totals: _Optional[_Union[UsageTotals, _Mapping]] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("total", "rows")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    total: UsageTotals
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    def __init__(self, total: _Optional[_Union[UsageTotals, _Mapping]] = ..., rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("sequence", "alert_id", "kind", "budget_id", "budget_name", "scope", "scope_id", "threshold_percent", "used_usd", "limit_usd", "percentage", "action", "period_start", "period_end", "fired_at", "message", "tier")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BUDGET_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    USED_USD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    FIRED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    alert_id: str
    kind: AlertKind
    budget_id: str
    budget_name: str
    scope: Scope
    scope_id: str
    threshold_percent: int
    used_usd: str
    limit_usd: str
    percentage: str
    action: OnExceed
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    fired_at: _timestamp_pb2.Timestamp
    message: str
    tier: bool
    def __init__(self, sequence: _Optional[int] = ..., alert_id: _Optional[str] = ..., kind: _Optional[_Union[AlertKind, str]] = ..., budget_id: _Optional[str] = ..., budget_name: _Optional[str] = ..., scope: _Optional[_Union[Scope, str]] = ..., scope_id: _Optional[str] = ..., threshold_percent: _Optional[int] = ..., used_usd: _Optional[str] = ..., limit_usd: _Optional[str] = ..., percentage: _Optional[str] = ..., action: _Optional[_Union[OnExceed, str]] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ..., tier: _Optional[bool] = ...) -> None: ...

class WatchAlertsRequest(_message.Message):
    __slots__ = ("after_sequence", "budget_ids")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_IDS_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    budget_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, after_sequence: _Optional[int] = ..., budget_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("id", "name", "roles", "grants", "trust_reported_cost", "created_at", "created_by", "expires_at", "revoked_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    TRUST_REPORTED_COST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    grants: _containers.RepeatedScalarFieldContainer[str]
    trust_reported_cost: bool
    created_at: _timestamp_pb2.Timestamp
    created_by: str
    expires_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., grants: _Optional[_Iterable[str]] = ..., trust_reported_cost: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "roles", "grants", "trust_reported_cost", "expires_in")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    TRUST_REPORTED_COST_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    name: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    grants: _containers.RepeatedScalarFieldContainer[str]
    trust_reported_cost: bool
    expires_in: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., grants: _Optional[_Iterable[str]] = ..., trust_reported_cost: _Optional[bool] = ..., expires_in: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: Token
    secret: str
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("include_inactive",)
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    include_inactive: bool
    def __init__(self, include_inactive: _Optional[bool] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    def __init__(self, tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("sequence", "at", "principal", "address", "action", "target", "before_json", "after_json")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BEFORE_JSON_FIELD_NUMBER: _ClassVar[int]
    AFTER_JSON_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    at: _timestamp_pb2.Timestamp
    principal: str
    address: str
    action: str
    target: str
    before_json: str
    after_json: str
    def __init__(self, sequence: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal: _Optional[str] = ..., address: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., before_json: _Optional[str] = ..., after_json: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("after_sequence", "page_size")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    page_size: int
    def __init__(self, after_sequence: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_after_sequence")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_after_sequence: int
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_after_sequence: _Optional[int] = ...) -> None: ...
