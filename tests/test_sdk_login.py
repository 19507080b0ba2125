"""`bim login` and `bim logout`: a key is stored (owner-only) only after the registry accepted
it, and every other command then uses it, after its flags and the environment.

tests/conftest.py points $XDG_CONFIG_HOME at a fresh directory for every test."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import sys
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

import bim_core.http
from bim_core.money import MICRO
from bim_sdk.cli_errors import EXIT_AUTH, EXIT_UNREACHABLE
from bim_sdk.config import Credentials, config_path, config_save, credentials_resolve
from developer.keys import api_key_create, api_key_revoke
from tests.factories import user_with_credits
from tests.test_sdk_cli import bim

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIM_URL", raising=False)
    monkeypatch.delenv("BIM_TOKEN", raising=False)


@pytest.fixture
def registry(live_server) -> dict:
    """The registry's URL and a user with 7 credits and a live API key."""
    user = user_with_credits(7)
    row, key = api_key_create(user=user, name="laptop")
    return {"url": live_server.url, "user": user, "key": key, "key_id": row.pk}


def stored() -> dict:
    return json.loads(config_path().read_text())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---------------------------------------------------------------- which URL and key a command uses


LOGIN = {"url": "https://bim.example", "token": "bim_stored"}


def test_a_flag_beats_the_environment_which_beats_the_login():
    environ = {"BIM_URL": "https://env.example", "BIM_TOKEN": "bim_env"}

    flags = credentials_resolve(url="https://flag.example", token="bim_flag", environ=environ, stored=LOGIN)
    assert flags == Credentials("https://flag.example", "bim_flag")
    assert credentials_resolve(url=None, token=None, environ=environ, stored=LOGIN) == Credentials(
        "https://env.example", "bim_env"
    )
    assert credentials_resolve(url=None, token=None, environ={}, stored=LOGIN) == Credentials(
        "https://bim.example", "bim_stored"
    )


def test_the_stored_key_goes_only_to_the_stored_registry():
    elsewhere = credentials_resolve(url="https://other.example", token=None, environ={}, stored=LOGIN)
    assert elsewhere == Credentials("https://other.example", None)

    same = credentials_resolve(url=None, token=None, environ={"BIM_URL": "https://bim.example/"}, stored=LOGIN)
    assert same.token == "bim_stored"


def test_the_config_is_the_owners_alone_whatever_the_umask(tmp_path):
    path = tmp_path / "config" / "bim" / "config.json"
    path.parent.mkdir(parents=True, mode=0o755)
    path.write_text("{}")
    path.chmod(0o644)
    previous = os.umask(0)
    try:
        config_save(path, url="https://bim.example", token="bim_x")
    finally:
        os.umask(previous)

    assert (mode(path.parent), mode(path)) == (0o700, 0o600)
    assert json.loads(path.read_text()) == {"url": "https://bim.example", "token": "bim_x"}
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temporary file left


def test_the_config_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_path() == tmp_path / "bim" / "config.json"

    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # invalid by the spec: ignored
    assert config_path() == Path.home() / ".config" / "bim" / "config.json"


# ---------------------------------------------------------------- bim login


@pytest.mark.django_db(transaction=True)
def test_login_stores_a_key_the_registry_accepted_and_commands_use_it(registry, capsys):
    status, out, err = bim(capsys, "login", "--url", registry["url"], "--key", registry["key"])

    assert status == 0, err
    assert registry["key"] not in out + err
    assert stored() == {"url": registry["url"], "token": registry["key"]}
    assert (mode(config_path().parent), mode(config_path())) == (0o700, 0o600)

    # No flag, no environment: the stored URL and key, sent as `Authorization: Bearer`.
    status, out, err = bim(capsys, "balance", "--json")
    assert status == 0, err
    assert json.loads(out)["credits_micro"] == 7 * MICRO


@pytest.mark.django_db(transaction=True)
def test_login_refuses_a_key_the_registry_refuses_and_writes_nothing(registry, capsys):
    api_key_revoke(user=registry["user"], key_id=registry["key_id"])

    status, out, err = bim(capsys, "login", "--url", registry["url"], "--key", registry["key"])

    assert status == EXIT_AUTH
    assert out == ""
    assert err.startswith("bim: HTTP 401 authentication_failed: unknown or revoked API key")
    assert "bim login" in err
    assert not config_path().exists()


def test_login_to_no_registry_exits_3_and_writes_nothing(capsys, monkeypatch):
    monkeypatch.setattr(bim_core.http.time, "sleep", lambda _s: None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"

    status, out, _ = bim(capsys, "login", "--url", url, "--key", "bim_x", "--json")

    assert status == EXIT_UNREACHABLE
    assert json.loads(out)["error"]["code"] == "unreachable"
    assert not config_path().exists()


@pytest.mark.django_db(transaction=True)
def test_login_reads_a_piped_key_from_stdin(registry, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(registry["key"] + "\n"))

    status, out, err = bim(capsys, "login", "--url", registry["url"], "--json")

    assert status == 0, err
    assert json.loads(out) == {"url": registry["url"], "config": str(config_path())}
    assert stored()["token"] == registry["key"]


@pytest.mark.django_db(transaction=True)
def test_login_asks_for_the_key_without_echo_on_a_terminal(registry, capsys, monkeypatch):
    prompts: list[str] = []
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or registry["key"])
    monkeypatch.setenv("BIM_URL", registry["url"])

    status, _, err = bim(capsys, "login")

    assert status == 0, err
    assert prompts and "API key" in prompts[0]
    assert stored() == {"url": registry["url"], "token": registry["key"]}


# ---------------------------------------------------------------- after login


@pytest.mark.django_db(transaction=True)
def test_the_environment_and_flags_beat_the_stored_login(registry, capsys, monkeypatch):
    config_save(config_path(), url=registry["url"], token=registry["key"])
    other = Token.objects.create(user=user_with_credits(3)).key

    monkeypatch.setenv("BIM_TOKEN", "not-a-token")
    status, _, err = bim(capsys, "balance")
    assert status == EXIT_AUTH and err.startswith("bim: HTTP 401 ")

    status, out, err = bim(capsys, "balance", "--token", other, "--json")
    assert status == 0, err
    assert json.loads(out)["credits_micro"] == 3 * MICRO


@pytest.mark.django_db(transaction=True)
def test_a_revoked_stored_key_exits_5(registry, capsys):
    config_save(config_path(), url=registry["url"], token=registry["key"])
    api_key_revoke(user=registry["user"], key_id=registry["key_id"])

    status, out, _ = bim(capsys, "jobs", "--json")

    assert status == EXIT_AUTH
    assert json.loads(out)["error"]["status"] == 401


def test_logout_forgets_the_key(capsys):
    config_save(config_path(), url="https://bim.example", token="bim_x")

    status, out, _ = bim(capsys, "logout")
    assert status == 0 and out.startswith("logged out: removed ")
    assert not config_path().exists()

    status, _, err = bim(capsys, "balance")
    assert status == 2
    assert "no registry URL: run `bim login`" in err

    status, out, _ = bim(capsys, "logout", "--json")
    assert status == 0 and json.loads(out)["logged_out"] is False


def test_a_broken_config_is_a_usage_error_that_names_the_file(capsys):
    config_path().parent.mkdir(parents=True)
    config_path().write_text("[1, 2")

    status, _, err = bim(capsys, "balance")

    assert status == 2
    assert str(config_path()) in err
