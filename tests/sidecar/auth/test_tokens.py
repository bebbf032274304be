"""Tokens: issued once, stored only as a hash, refused when unknown, revoked or expired — on every
sidecar that shares the store, within the refresh interval."""

from __future__ import annotations

import time

import pytest

from collector_processor.auth.desk import TokenDesk
from collector_processor.auth.grants import ALL, parse_grants
from collector_processor.auth.principal import Principal, Role
from collector_processor.auth.tokens import TokenBook, Unauthenticated, hash_token, token_id_of
from collector_processor.domain.access import Actor
from collector_processor.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from tests.sidecar.conftest import StoreFactory

ROOT = Principal(name="root", roles=frozenset({Role.ADMIN}), grants=ALL)
WHO = Actor(principal="root", address="ipv4:127.0.0.1:5555")


class Now:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


def desk_of(store: object, now: Now) -> TokenDesk:
    return TokenDesk(store, now_ms=now, on_change=lambda: None)  # type: ignore[arg-type]


def test_an_issued_token_names_its_principal_and_only_its_hash_is_stored(store_factory: StoreFactory) -> None:
    store, now = store_factory.open(), Now()
    issued = desk_of(store, now).issue(
        ROOT, WHO, name="ci-runner", roles=["spender"], grants=["team=search"], trust_reported_cost=False,
        expires_in_ms=0,
    )  # fmt: skip
    assert token_id_of(issued.secret) == issued.record.id
    principal = TokenBook(store, now_ms=now).authenticate(issued.secret)
    assert principal.name == "ci-runner" and principal.roles == {Role.SPENDER}
    assert str(principal.grants) == "team=search"
    stored = store.list_tokens()
    assert [t.secret_sha256 for t in stored] == [hash_token(issued.secret)]
    if store_factory.backend == "sqlite":
        store.close()
        assert issued.secret.encode() not in store_factory.path.read_bytes()
        assert issued.secret[len("pmt_") + 13 :].encode() not in store_factory.path.read_bytes()


def test_unknown_and_forged_tokens_are_refused(store_factory: StoreFactory) -> None:
    store, now = store_factory.open(), Now()
    issued = desk_of(store, now).issue(
        ROOT, WHO, name="a", roles=["reader"], grants=["*"], trust_reported_cost=False, expires_in_ms=0
    )
    book = TokenBook(store, now_ms=now)
    forged = issued.secret[:-1] + ("A" if issued.secret[-1] != "A" else "B")
    for token in (forged, "pmt_000000000000_" + "x" * 43, "not-a-token", "x" * 5000):
        with pytest.raises(Unauthenticated) as info:
            book.authenticate(token)
        assert info.value.reason == "invalid_token"
        assert token not in str(info.value)


def test_a_revoked_token_stops_working_on_every_sidecar_sharing_the_store(
    store_factory: StoreFactory,
) -> None:
    store, other, now = store_factory.open(), store_factory.open(), Now()
    issued = desk_of(store, now).issue(
        ROOT,
        WHO,
        name="a",
        roles=["spender"],
        grants=["team=search"],
        trust_reported_cost=False,
        expires_in_ms=0,
    )
    here, there = TokenBook(store, now_ms=now, refresh_s=0.05), TokenBook(other, now_ms=now, refresh_s=0.05)
    assert there.authenticate(issued.secret).name == "a"
    desk_of(store, now).revoke(ROOT, WHO, issued.record.id)
    here.refresh(force=True)
    with pytest.raises(Unauthenticated) as info:
        here.authenticate(issued.secret)
    assert info.value.reason == "revoked"
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            there.authenticate(issued.secret)
        except Unauthenticated as exc:
            assert exc.reason == "revoked"
            break
        time.sleep(0.01)
    else:
        pytest.fail("the other sidecar still accepted a revoked token after 2 s")


def test_a_token_expires_at_its_time(store_factory: StoreFactory) -> None:
    store, now = store_factory.open(), Now()
    issued = desk_of(store, now).issue(
        ROOT, WHO, name="a", roles=["reader"], grants=["*"], trust_reported_cost=False, expires_in_ms=60_000
    )
    book = TokenBook(store, now_ms=now)
    assert book.authenticate(issued.secret).name == "a"
    now.ms += 60_000
    with pytest.raises(Unauthenticated) as info:
        book.authenticate(issued.secret)
    assert info.value.reason == "expired"
    listed = desk_of(store, now).tokens(ROOT, include_inactive=False)
    assert listed == [] and len(desk_of(store, now).tokens(ROOT, include_inactive=True)) == 1


def test_an_admin_issues_and_sees_only_what_its_grants_hold(store_factory: StoreFactory) -> None:
    store, now = store_factory.open(), Now()
    desk = desk_of(store, now)
    lead = Principal(name="lead", roles=frozenset({Role.ADMIN}), grants=parse_grants(["team=search"]))
    mine = desk.issue(lead, WHO, name="mine", roles=["spender"], grants=["team=search"], trust_reported_cost=False,
                      expires_in_ms=0)  # fmt: skip
    theirs = desk.issue(ROOT, WHO, name="theirs", roles=["spender"], grants=["team=billing"],
                        trust_reported_cost=False, expires_in_ms=0)  # fmt: skip
    with pytest.raises(PermissionDeniedError, match="reach beyond lead's own grants"):
        desk.issue(lead, WHO, name="wide", roles=["spender"], grants=["team=*"], trust_reported_cost=False,
                   expires_in_ms=0)  # fmt: skip
    assert [t.name for t in desk.tokens(lead, include_inactive=True)] == ["mine"]
    with pytest.raises(NotFoundError):
        desk.revoke(lead, WHO, theirs.record.id)
    assert desk.revoke(lead, WHO, mine.record.id).revoked_ms == now.ms
    events, _ = desk.audit(lead, after=0, limit=0)
    assert [(e.action, e.target) for e in events] == [
        ("token.create", mine.record.id),
        ("token.revoke", mine.record.id),
    ]
    assert all(e.principal == "root" and e.address == WHO.address for e in events)
    assert mine.secret not in repr(events) and hash_token(mine.secret) not in repr(events)


@pytest.mark.parametrize(
    ("field", "kwargs", "message"),
    [
        ("name", {"name": "a b"}, "name: must be 1-128 characters"),
        ("roles", {"roles": []}, "roles: at least one role"),
        ("roles", {"roles": ["owner"]}, "unknown role 'owner'"),
        ("grants", {"grants": []}, "grants: at least one grant"),
        ("grants", {"grants": ["team"]}, "grants[0]: must be <scope>=<id>"),
        ("expires_in", {"expires_in_ms": 11 * 366 * 86_400_000}, "expires_in: must be between"),
    ],
)
def test_a_malformed_token_request_names_the_field(
    store_factory: StoreFactory, field: str, kwargs: dict[str, object], message: str
) -> None:
    request: dict[str, object] = {
        "name": "ok", "roles": ["reader"], "grants": ["*"], "trust_reported_cost": False, "expires_in_ms": 0,
    }  # fmt: skip
    request.update(kwargs)
    with pytest.raises(InvalidRequestError) as info:
        desk_of(store_factory.open(), Now()).issue(ROOT, WHO, **request)  # type: ignore[arg-type]
    assert str(info.value).startswith(field) and message in str(info.value)
