"""``paymaster.toml``: where it is found, what it may say, and the typed configuration it loads into.

The file is searched for once per process: ``$PAYMASTER_CONFIG``, then ``./paymaster.toml``, then
``./flujo.toml`` (whose ``[cost]`` tables have the same shape, so prices configured for the seeds'
system keep working; its other tables are ignored). Everything is checked at load, by pydantic
models at this edge: malformed TOML, unknown keys, negative or non-numeric prices raise
``ConfigError`` naming the file, the line, the key and what was expected, so a typo never turns
into a silently unpriced model at run time. Prices are read as exact ``Decimal``s: TOML floats
never pass through binary floating point.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictBool,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from paymaster.exceptions import ConfigError
from paymaster.money import to_decimal, to_tokens
from paymaster.usage import ModelRef, canonical_provider, parse_model_ref

__all__ = [
    "CONFIG_ENV_VAR",
    "CostConfig",
    "EstimatorHint",
    "ModelPricing",
    "PaymasterConfig",
    "clear_config_cache",
    "find_config_path",
    "get_config",
    "load_config",
    "parse_config",
]

CONFIG_ENV_VAR = "PAYMASTER_CONFIG"
"""Environment variable naming the configuration file; it wins over the working directory's files."""
_SEARCHED = ("paymaster.toml", "flujo.toml")
_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")
_T = TypeVar("_T")


# ------------------------------------------------------------------------------ typed configuration
@dataclass(frozen=True, kw_only=True, slots=True)
class ModelPricing:
    """The configured prices of one model, in USD; a price left out is unknown, never zero."""

    prompt_tokens_per_1k: Decimal | None = None
    """Per 1,000 input tokens (cached ones too, unless ``cache_read_tokens_per_1k`` is given)."""
    completion_tokens_per_1k: Decimal | None = None
    """Per 1,000 output tokens (reasoning ones too, unless ``reasoning_tokens_per_1k`` is given)."""
    cache_read_tokens_per_1k: Decimal | None = None
    """Per 1,000 input tokens served from the provider's prompt cache."""
    cache_write_tokens_per_1k: Decimal | None = None
    """Per 1,000 input tokens written to the provider's prompt cache."""
    reasoning_tokens_per_1k: Decimal | None = None
    """Per 1,000 reasoning tokens, where a provider bills them apart from other output."""
    price_per_image: Decimal | None = None
    """Per image of any quality and size that no ``price_per_image_<quality>_<size>`` key prices."""
    image_prices: Mapping[str, Decimal] = field(default_factory=dict)
    """Per image, by ``price_per_image_<quality>_<size>`` key."""

    @property
    def has_image_prices(self) -> bool:
        """True when any per-image price is configured."""
        return self.price_per_image is not None or bool(self.image_prices)


@dataclass(frozen=True, kw_only=True, slots=True)
class EstimatorHint:
    """What one call of a model is expected to use, from ``[cost.estimators]``."""

    expected_cost_usd: Decimal | None = None
    """Expected cost of one call in USD."""
    expected_tokens: int | None = None
    """Expected total tokens of one call."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CostConfig:
    """The ``[cost]`` tables: strict mode, prices and estimator hints, keyed by canonical provider."""

    strict: bool = False
    """Every model used must be priced here; library defaults are refused."""
    providers: Mapping[str, Mapping[str, ModelPricing]] = field(default_factory=dict)
    """``provider -> model -> prices``."""
    estimators: Mapping[str, Mapping[str, EstimatorHint]] = field(default_factory=dict)
    """``provider -> model -> expected usage of one call``."""

    def pricing_for(self, ref: ModelRef) -> tuple[ModelRef, ModelPricing] | None:
        """The configured prices of ``ref`` and the reference they were found under."""
        return _lookup(self.providers, ref)

    def hint_for(self, ref: ModelRef) -> EstimatorHint | None:
        """The configured estimate of one call of ``ref``."""
        found = _lookup(self.estimators, ref)
        return None if found is None else found[1]


@dataclass(frozen=True, kw_only=True, slots=True)
class PaymasterConfig:
    """Everything ``paymaster.toml`` configures."""

    cost: CostConfig = field(default_factory=CostConfig)
    """The ``[cost]`` tables."""
    downgrade: Mapping[str, str] = field(default_factory=dict)
    """``[downgrade]``: ``"provider:model"`` -> the cheaper ``"provider:model"`` to use instead."""
    path: Path | None = None
    """The file this was loaded from; ``None`` when no file was found."""

    @property
    def display_name(self) -> str:
        """The file as messages name it: relative to the working directory when inside it."""
        return _display(self.path) if self.path is not None else "paymaster.toml"


def _lookup(tables: Mapping[str, Mapping[str, _T]], ref: ModelRef) -> tuple[ModelRef, _T] | None:
    """Exact name, then lower-cased, then without a date suffix (``gpt-4o-2024-08-06`` -> ``gpt-4o``).
    A bare name whose provider is unknown matches only when exactly one provider lists it: the file
    disambiguates, nothing is guessed."""
    providers = [ref.provider] if ref.provider else list(tables)
    hits: list[tuple[ModelRef, _T]] = []
    for provider in providers:
        models = tables.get(provider)
        if not models:
            continue
        lower = ref.model.lower()
        for name in (ref.model, lower, _DATED.sub("", lower)):
            if name in models:
                hits.append((ModelRef(provider=provider, model=name), models[name]))
                break
    return hits[0] if len(hits) == 1 else None


# ------------------------------------------------------------------------------------ loading
def find_config_path(*, cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """``$PAYMASTER_CONFIG``, else ``./paymaster.toml``, else ``./flujo.toml``, else ``None``."""
    env = os.environ if environ is None else environ
    named = env.get(CONFIG_ENV_VAR)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{CONFIG_ENV_VAR}={named!r} names no file: fix the variable or create the file"
            )
        return path
    base = Path.cwd() if cwd is None else cwd
    for name in _SEARCHED:
        if (base / name).is_file():
            return base / name
    return None


def load_config(path: str | Path | None = None) -> PaymasterConfig:
    """Load ``path``, or the file ``find_config_path`` finds; no file gives the empty configuration."""
    found = Path(path) if path is not None else find_config_path()
    if found is None:
        return PaymasterConfig()
    try:
        text = found.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{_display(found)}: cannot be read: {exc}") from None
    return parse_config(text, path=found)


def parse_config(text: str, *, path: str | Path = "paymaster.toml") -> PaymasterConfig:
    """Parse and check configuration text; ``path`` names it in errors. A file named ``flujo.toml``
    is read for its ``[cost]`` tables only."""
    file = Path(path)
    shown = _display(file)
    try:
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_syntax_message(shown, exc, text)) from None
    if file.name == "flujo.toml":
        document = {"cost": document["cost"]} if "cost" in document else {}
    try:
        raw = _Document.model_validate(document)
    except ValidationError as exc:
        lines = _KeyLines(text)
        raise ConfigError("\n".join(_explain(shown, lines, e) for e in exc.errors())) from None
    downgrade = _downgrades(raw.downgrade, shown, text)
    try:
        cost = raw.cost.to_config()
    except ValueError as exc:
        raise ConfigError(f"{shown}: [cost]: {exc}") from None
    return PaymasterConfig(cost=cost, downgrade=downgrade, path=file)


_AT = re.compile(r"^(?P<msg>.*?)\s*\(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$", re.S)


def _syntax_message(shown: str, exc: tomllib.TOMLDecodeError, text: str) -> str:
    match = _AT.match(str(exc))
    if match is None:
        return f"{shown}: invalid TOML: {exc}"
    if match["line"] is None:
        return f"{shown}:{text.count(chr(10)) + 1}: invalid TOML: {match['msg']} (at end of file)"
    return f"{shown}:{match['line']}:{match['col']}: invalid TOML: {match['msg']}"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


# -------------------------------------------------------------------------------- process cache
_cached: PaymasterConfig | None = None
_lock = threading.Lock()


def get_config() -> PaymasterConfig:
    """The configuration found by the search, loaded once per process (see ``clear_config_cache``)."""
    global _cached
    found = _cached
    if found is None:
        with _lock:
            found = _cached
            if found is None:
                found = _cached = load_config()
    return found


def clear_config_cache() -> None:
    """Forget the loaded configuration: the next ``get_config`` searches the files again."""
    global _cached
    with _lock:
        _cached = None


# ------------------------------------------------------------------- the schema (pydantic, edge only)
_IMAGE_KEY = re.compile(r"^price_per_image_([a-z0-9]+)_(\d+x\d+)$")
_IMAGE_PATTERN = "price_per_image_<quality>_<size>"


def _price(value: object) -> Decimal:
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        try:
            return to_decimal(value)
        except ValueError:
            pass
    raise ValueError(f"expected a non-negative number of USD, got {_toml(value)}")


def _count(value: object) -> int:
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        try:
            return to_tokens(value)
        except ValueError:
            pass
    raise ValueError(f"expected a non-negative whole number of tokens, got {_toml(value)}")


_Price = Annotated[Decimal, BeforeValidator(_price)]
_Count = Annotated[int, BeforeValidator(_count)]


class _PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt_tokens_per_1k: _Price | None = None
    completion_tokens_per_1k: _Price | None = None
    cache_read_tokens_per_1k: _Price | None = None
    cache_write_tokens_per_1k: _Price | None = None
    reasoning_tokens_per_1k: _Price | None = None
    price_per_image: _Price | None = None
    image_prices: dict[str, _Price] = {}

    @model_validator(mode="before")
    @classmethod
    def _gather_images(cls, data: Any) -> Any:
        # price_per_image_<quality>_<size> keys are open-ended: gather them so that extra="forbid"
        # still refuses every other unknown key.
        if not isinstance(data, dict):
            return data
        images = {k: v for k, v in data.items() if isinstance(k, str) and _IMAGE_KEY.match(k)}
        rest = {k: v for k, v in data.items() if k not in images}
        return {**rest, "image_prices": images} if images else rest

    @model_validator(mode="after")
    def _some_price(self) -> _PriceTable:
        if not any(getattr(self, k) is not None for k in _PRICE_KEYS) and not self.image_prices:
            raise PydanticCustomError("table", "no price given; expected " + _expected(_PriceTable))
        return self

    def to_pricing(self) -> ModelPricing:
        return ModelPricing(
            **{k: getattr(self, k) for k in _PRICE_KEYS}, image_prices=dict(self.image_prices)
        )


_PRICE_KEYS = tuple(k for k in _PriceTable.model_fields if k != "image_prices")


class _HintTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expected_cost_usd: _Price | None = None
    expected_tokens: _Count | None = None

    @model_validator(mode="after")
    def _some_hint(self) -> _HintTable:
        if self.expected_cost_usd is None and self.expected_tokens is None:
            raise PydanticCustomError("table", "no hint given; expected " + _expected(_HintTable))
        return self


def _flatten_models(value: Any) -> Any:
    """``[cost.providers.openai.gpt-3.5-turbo]`` (unquoted) is, to TOML, the table ``gpt-3`` holding
    the table ``5-turbo``. Price tables hold only numbers, so a table of tables under a provider can
    only be such a split model name: join it back (``gpt-3.5-turbo``), as the seeds' files expect."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for provider, models in value.items():
        if not isinstance(models, dict):
            out[provider] = models
            continue
        flat: dict[str, Any] = {}
        for name, table in models.items():
            flat.update(_join(str(name), table))
        out[provider] = flat
    return out


def _join(name: str, table: Any) -> dict[str, Any]:
    if isinstance(table, dict) and table and all(isinstance(v, dict) for v in table.values()):
        joined: dict[str, Any] = {}
        for part, inner in table.items():
            joined.update(_join(f"{name}.{part}", inner))
        return joined
    return {name: table}


_Models = Annotated[dict[str, dict[str, _PriceTable]], BeforeValidator(_flatten_models)]
_Hints = Annotated[dict[str, dict[str, _HintTable]], BeforeValidator(_flatten_models)]


class _CostTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strict: StrictBool = False
    providers: _Models = {}
    estimators: _Hints = {}

    def to_config(self) -> CostConfig:
        """Typed tables under canonical provider names; two spellings of one provider (``google``
        and ``google-gla``) pricing the same model is refused rather than silently merged."""
        providers = _merge(self.providers, lambda t: t.to_pricing())
        estimators = _merge(
            self.estimators,
            lambda h: EstimatorHint(expected_cost_usd=h.expected_cost_usd, expected_tokens=h.expected_tokens),
        )
        return CostConfig(strict=self.strict, providers=providers, estimators=estimators)


def _merge(raw: Mapping[str, Mapping[str, Any]], convert: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for provider, models in raw.items():
        target = out.setdefault(canonical_provider(provider), {})
        for model, table in models.items():
            if model in target:
                raise ValueError(
                    f"model {model!r} is configured twice under provider {provider!r} and an alias of it "
                    f"(both mean {canonical_provider(provider)!r}); keep one"
                )
            target[model] = convert(table)
    return out


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cost: _CostTable = _CostTable()
    downgrade: dict[str, StrictStr] = {}


def _expected(model: type[BaseModel]) -> str:
    keys = [k for k in model.model_fields if k != "image_prices"]
    if model is _PriceTable:
        keys.append(_IMAGE_PATTERN)
    return "one of " + ", ".join(keys)


def _table_model(loc: tuple[str, ...]) -> type[BaseModel]:
    if not loc:
        return _Document
    if loc == ("cost",):
        return _CostTable
    return _PriceTable if loc[:2] == ("cost", "providers") else _HintTable


# ------------------------------------------------------------------------------- error messages
def _explain(shown: str, lines: _KeyLines, error: Any) -> str:
    loc = tuple(str(p) for p in error["loc"] if p != "image_prices")
    kind = error["type"]
    if kind == "extra_forbidden":
        table, key = loc[:-1], loc[-1]
        expected = _table_model(table)
        hint = difflib.get_close_matches(key, [k for k in expected.model_fields if k != "image_prices"], n=1)
        more = f" (did you mean {hint[0]!r}?)" if hint else ""
        what = f"unknown key {key!r}{more}; expected {_expected(expected)}"
        return f"{shown}:{lines.find(loc)}: {_where(table, None)}: {what}"
    if kind == "table":
        return f"{shown}:{lines.find(loc)}: {_where(loc, None)}: {error['msg']}"
    table, key = loc[:-1], loc[-1]
    if kind == "value_error":
        what = str(error["msg"]).removeprefix("Value error, ")
    elif kind in ("bool_type", "bool_parsing"):
        what = f"expected true or false, got {_toml(error['input'])}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        what = f"expected a table, got {_toml(error['input'])}"
    elif kind == "string_type":
        what = f'expected a "provider:model" string, got {_toml(error["input"])}'
    else:
        what = str(error["msg"])
    return f"{shown}:{lines.find(loc)}: {_where(table, key)}: {what}"


def _where(table: tuple[str, ...], key: str | None) -> str:
    if not table:
        return "top level" if key is None else f"top level {_quote(key)}"
    # Model names are always quoted, as they must be when they contain dots (gpt-3.5-turbo).
    is_model = len(table) > 3 and table[:2] in (("cost", "providers"), ("cost", "estimators"))
    parts = [f'"{p}"' if is_model and i == 3 else _quote(p) for i, p in enumerate(table)]
    header = "[" + ".".join(parts) + "]"
    return header if key is None else f"{header} {_quote(key)}"


def _quote(part: str) -> str:
    return part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else '"' + part.replace('"', '\\"') + '"'


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Decimal) and not value.is_finite():
        return "nan" if value.is_nan() else str(value).lower().replace("infinity", "inf")
    return str(value)


class _KeyLines:
    """Line numbers of the keys and table headers in TOML text, found by scanning it.

    tomllib reports lines for syntax errors only; a semantic error (a negative price) is located by
    finding its key here. Model names split by unquoted dots are joined back as the schema does.
    """

    _PART = re.compile(r"""\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*""")

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.lstrip()
            if stripped.startswith("["):
                parts, _ = self._parts(stripped.lstrip("["))
                table = self._canonical(parts)
                self._lines.setdefault(table, number)
            elif "=" in stripped and not stripped.startswith("#"):
                parts, rest = self._parts(stripped)
                if parts and rest.startswith("="):
                    self._lines.setdefault(table + parts, number)

    def _parts(self, text: str) -> tuple[tuple[str, ...], str]:
        parts: list[str] = []
        pos = 0
        while True:
            match = self._PART.match(text, pos)
            if match is None:
                break
            parts.append(next(g for g in match.groups() if g is not None))
            pos = match.end()
            if not text.startswith(".", pos):
                break
            pos += 1
        return tuple(parts), text[pos:].lstrip()

    @staticmethod
    def _canonical(parts: tuple[str, ...]) -> tuple[str, ...]:
        if len(parts) > 4 and parts[:2] in (("cost", "providers"), ("cost", "estimators")):
            return (*parts[:3], ".".join(parts[3:]))
        return parts

    def find(self, loc: tuple[str, ...]) -> int | str:
        """The line of ``loc``, else of its nearest ancestor, else of its first descendant
        (``[costs.providers.x]`` declares ``costs`` implicitly); ``?`` when none is found."""
        for end in range(len(loc), 0, -1):
            found = self._lines.get(loc[:end])
            if found is not None:
                return found
        below = [line for path, line in self._lines.items() if path[: len(loc)] == loc]
        return min(below) if below else "?"


def _downgrades(raw: Mapping[str, str], shown: str, text: str) -> dict[str, str]:
    """``[downgrade]`` as canonical ``provider:model`` pairs; no self-loops, no cycles."""
    lines = _KeyLines(text)
    out: dict[str, str] = {}
    for key, value in raw.items():
        where = f"{shown}:{lines.find(('downgrade', key))}: [downgrade] {_quote(key)}"
        refs = []
        for text_ref in (key, value):
            ref = parse_model_ref(text_ref)
            if ref.provider is None or not ref.model:
                raise ConfigError(
                    f'{where}: expected "provider:model", got {_toml(text_ref)} '
                    "(its provider cannot be inferred)"
                )
            refs.append(str(ref))
        if refs[0] == refs[1]:
            raise ConfigError(f"{where}: a model cannot downgrade to itself")
        out[refs[0]] = refs[1]
    for start in out:
        seen = [start]
        while seen[-1] in out:
            nxt = out[seen[-1]]
            if nxt in seen:
                chain = " -> ".join([*seen, nxt])
                line = lines.find(("downgrade", _raw_key(raw, seen[-1])))
                raise ConfigError(f"{shown}:{line}: [downgrade] has a cycle: {chain}")
            seen.append(nxt)
    return out


def _raw_key(raw: Mapping[str, str], canonical: str) -> str:
    """The key as written in the file of a canonical ``provider:model``."""
    return next((k for k in raw if str(parse_model_ref(k)) == canonical), canonical)
