"""The store never shows a secret, and its deadline settings are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from graphthrift import Store, StoreUnavailable
from graphthrift.store import hide_password

SECRET_URL = (
    "postgresql://admin:hunter2@127.0.0.1:1/ledger"
    "?password=querysecret&sslpassword=keysecret&sslmode=prefer"
)


def test_every_libpq_secret_is_masked_in_errors_repr_and_display_url(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable) as info:
        Store(SECRET_URL, home=tmp_path, connect_timeout=2)
    shown = [str(info.value), info.value.url, repr(info.value), hide_password(SECRET_URL)]
    for text in shown:
        for secret in ("hunter2", "querysecret", "keysecret"):
            assert secret not in text, text
    assert "sslmode=prefer" in hide_password(SECRET_URL)  # what is not secret stays readable
    assert "127.0.0.1:1/ledger" in str(info.value)


def test_a_working_store_shows_no_query_secret(store: Store, tmp_path: Path) -> None:
    from sqlalchemy import make_url

    url = make_url(store.url).update_query_dict({"password": "querysecret"})
    other = Store(url.render_as_string(hide_password=False), home=tmp_path)
    try:
        assert "querysecret" not in other.display_url
        assert "querysecret" not in repr(other)
        assert "graphthrift_query_timeout" not in other.display_url  # our own plumbing
    finally:
        other.close()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_query_timeouts_are_refused(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ValueError, match="query_timeout"):
        Store("postgresql://localhost/db", home=tmp_path, query_timeout=bad)


def test_a_bad_store_timeout_environment_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAPHTHRIFT_STORE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="GRAPHTHRIFT_STORE_TIMEOUT"):
        Store("postgresql://localhost/db", home=tmp_path)


def test_a_deadline_must_be_positive_or_none(store: Store) -> None:
    with pytest.raises(ValueError, match="deadline"), store.deadline(0):
        pass
