"""Settings: defaults < config file < RBEE_* environment < flags; `rbee config show`."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

import rbee_hive.settings
import rbee_keeper.config
from rbee_contracts.auth import write_private_file
from rbee_keeper.config import HIVE_MODEL_ROOTS_ENV, SETTINGS, ConfigError, load_settings
from rbee_keeper.services import local_services

Invoke = Callable[..., Result]


def write_config(env: dict[str, str], text: str) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "rbee" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_follow_xdg(env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "RBEE_QUEEN_URL"}
    settings = load_settings(env=env)
    assert settings.queen_url == "http://127.0.0.1:8500"
    assert settings.state_dir == Path(env["XDG_STATE_HOME"]) / "rbee"
    assert settings.models_dir == Path(env["XDG_DATA_HOME"]) / "rbee" / "models"
    assert settings.config_file == Path(env["XDG_CONFIG_HOME"]) / "rbee" / "config.toml"
    assert not settings.config_file_found
    assert settings.queen_command == (sys.executable, "-m", "rbee_queen.app")
    assert settings.hive_command == (sys.executable, "-m", "rbee_hive.app")
    assert settings.hive_port == 9000
    assert set(settings.sources.values()) == {"default"}


def test_relative_xdg_values_are_ignored(env: dict[str, str]) -> None:
    settings = load_settings(env={"XDG_STATE_HOME": "relative/state"})
    assert settings.state_dir == Path.home() / ".local" / "state" / "rbee"


def test_precedence_file_then_env_then_flag(env: dict[str, str]) -> None:
    path = write_config(
        env,
        'queen_url = "http://10.0.0.1:8500"\n'
        "hive_port = 9001\n"
        'hive_id = "box"\n'
        'state_dir = "state"\n'
        'hive_command = ["rbee-hive", "--heartbeat", "1"]\n',
    )
    env = dict(env, RBEE_QUEEN_URL="http://10.0.0.2:8500", RBEE_HIVE_PORT="9002")
    settings = load_settings({"queen_url": "http://10.0.0.3:8500/"}, env=env)
    assert settings.queen_url == "http://10.0.0.3:8500"  # flag, trailing slash dropped
    assert settings.hive_port == 9002  # env
    assert settings.hive_id == "box"  # file
    assert settings.state_dir == path.parent / "state"  # relative to the file
    assert settings.hive_command == ("rbee-hive", "--heartbeat", "1")
    assert settings.sources["queen_url"] == "flag --queen-url"
    assert settings.sources["hive_port"] == "env RBEE_HIVE_PORT"
    assert settings.sources["hive_id"] == f"file {path}"
    assert settings.sources["stop_timeout"] == "default"


def test_commands_from_the_environment_are_shell_split(env: dict[str, str]) -> None:
    env = dict(env, RBEE_QUEEN_COMMAND="'/opt/my python' -m rbee_queen.app")
    assert load_settings(env=env).queen_command == ("/opt/my python", "-m", "rbee_queen.app")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hive_port = 0\n", "setting hive_port (file"),
        ('queen_url = "ftp://x"\n', "must be an http(s) URL"),
        ("stop_timeout = -1\n", "positive number of seconds"),
        ("queen_command = []\n", "non-empty list of strings"),
        ("typo = 1\n", "unknown setting 'typo'"),
        ("queen_url = \n", "not valid TOML"),
    ],
)
def test_bad_config_values_are_named(env: dict[str, str], text: str, expected: str) -> None:
    write_config(env, text)
    env = {k: v for k, v in env.items() if not k.startswith("RBEE_")}
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert expected in str(info.value)


def test_bad_env_value_is_a_usage_error(invoke: Invoke) -> None:
    result = invoke("config", "show", RBEE_HIVE_PORT="many")
    assert result.exit_code == 2
    assert "setting hive_port (env RBEE_HIVE_PORT) must be a port number" in result.stderr


def test_an_explicit_config_file_must_exist(env: dict[str, str], invoke: Invoke) -> None:
    result = invoke("--config", "/nonexistent/rbee.toml", "config", "show")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    with pytest.raises(ConfigError):
        load_settings(env=dict(env, RBEE_CONFIG="/nonexistent/rbee.toml"))


def test_config_show_via_the_cli(env: dict[str, str], invoke: Invoke) -> None:
    write_config(env, "hive_port = 9001\nhive_id = 'file-hive'\n")
    result = invoke(
        "--hive-port",
        "9003",
        "config",
        "show",
        "--json",
        RBEE_HIVE_PORT="9002",
        RBEE_HIVE_ID="env-hive",
    )
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["config_file_found"] is True
    assert shown["settings"]["hive_port"] == 9003
    assert shown["sources"]["hive_port"] == "flag --hive-port"
    assert shown["settings"]["hive_id"] == "env-hive"


def test_config_show_prints_a_usable_toml_file(env: dict[str, str], invoke: Invoke) -> None:
    result = invoke("config", "show")
    assert result.exit_code == 0, result.stderr
    parsed = tomllib.loads(result.stdout)
    unset = {"tls_ca"}  # TOML has no null: an unset setting is a comment
    assert set(parsed) == {spec.name for spec in SETTINGS} - unset
    assert '# tls_ca = ""  # not set (default)' in result.stdout
    for spec in SETTINGS:
        assert spec.env in result.stdout
    # Written back as a config file, it reads back to the same settings.
    write_config(env, result.stdout)
    again = load_settings(env=env)
    assert again.config_file_found
    assert again.as_dict() == load_settings(env=env, config_file=None).as_dict()
    assert again.as_dict()["hive_port"] == parsed["hive_port"]


def test_every_setting_is_documented() -> None:
    doc = rbee_keeper.config.__doc__ or ""
    for spec in SETTINGS:
        assert spec.name in doc and spec.env in doc
        if spec.flag:
            assert spec.flag in doc


def test_token_file_defaults_to_the_local_queens_and_follows_state_dir(env: dict[str, str]) -> None:
    settings = load_settings({"state_dir": "/srv/rbee"}, env=env)
    assert settings.token_file == Path("/srv/rbee/queen/keeper.token")
    assert settings.sources["token_file"] == "default"
    assert settings.token is None and "token" not in settings.sources
    named = load_settings(env=dict(env, RBEE_TOKEN_FILE="/etc/rbee/keeper.token"))
    assert named.token_file == Path("/etc/rbee/keeper.token")
    assert named.sources["token_file"] == "env RBEE_TOKEN_FILE"


def test_the_token_is_read_from_the_environment_and_never_shown(
    env: dict[str, str], invoke: Invoke
) -> None:
    token = "rbee_k_not-a-real-token-but-secret-enough-0123456789"
    settings = load_settings(env=dict(env, RBEE_TOKEN=token))
    assert settings.token == token
    assert settings.sources["token"] == "env RBEE_TOKEN"
    assert token not in repr(settings)
    assert token not in json.dumps(settings.as_dict())

    shown = invoke("config", "show", RBEE_TOKEN=token)
    assert shown.exit_code == 0, shown.stderr
    assert token not in shown.stdout + shown.stderr
    assert "# token: ***  # env RBEE_TOKEN" in shown.stdout
    tomllib.loads(shown.stdout)  # still a usable config file, without the token
    as_json = invoke("config", "show", "--json", RBEE_TOKEN=token)
    assert as_json.exit_code == 0, as_json.stderr
    assert token not in as_json.stdout + as_json.stderr
    parsed = json.loads(as_json.stdout)
    assert parsed["token"] == "***" and parsed["token_source"] == "env RBEE_TOKEN"

    without = json.loads(invoke("config", "show", "--json").stdout)
    assert without["token"] is None


def test_the_token_is_not_taken_from_the_config_file(env: dict[str, str]) -> None:
    write_config(env, 'token = "rbee_k_x"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert "RBEE_TOKEN" in str(info.value) and "rbee_k_x" not in str(info.value)


def test_model_roots_from_the_file_and_the_environment(env: dict[str, str], tmp_path: Path) -> None:
    assert load_settings(env=env).model_roots == ()
    path = write_config(env, "model_roots = ['/data/models', 'relative', '~/m']\n")
    from_file = load_settings(env=env)
    assert from_file.model_roots == (
        Path("/data/models"),
        path.parent / "relative",
        Path.home() / "m",
    )
    assert from_file.sources["model_roots"] == f"file {path}"
    joined = os.pathsep.join(["/a", "", "b", "/a"])
    from_env = load_settings(env=dict(env, RBEE_MODEL_ROOTS=joined), cwd=tmp_path)
    assert from_env.model_roots == (Path("/a"), tmp_path / "b")
    assert from_env.as_dict()["model_roots"] == ["/a", str(tmp_path / "b")]
    for bad in ("{a = 1}", "[1]", "['']", "['/data', '/']", "['/etc/models']", "['~']"):
        write_config(env, f"model_roots = {bad}\n")
        with pytest.raises(ConfigError, match=r"setting model_roots .*must be"):
            load_settings(env=env)


def test_model_roots_reach_the_local_hive_through_the_queens_environment(
    env: dict[str, str],
) -> None:
    # the name the hive reads (the keeper does not import the hive)
    assert HIVE_MODEL_ROOTS_ENV == rbee_hive.settings.ENV_MODEL_ROOTS
    roots = os.pathsep.join(["/data/a", "/data/b"])
    settings = load_settings(env=dict(env, RBEE_MODEL_ROOTS=roots))
    assert settings.queen_environment() == {HIVE_MODEL_ROOTS_ENV: roots}
    queen, _ = local_services(settings)
    assert queen.env == {HIVE_MODEL_ROOTS_ENV: roots}
    # none configured: nothing added (the queen inherits the hive's own variable, if set)
    assert load_settings(env=env).queen_environment() == {}


def test_config_show_reads_the_token_file_and_says_where_the_token_is(
    env: dict[str, str], tmp_path: Path, invoke: Invoke
) -> None:
    default = Path(env["XDG_STATE_HOME"]) / "rbee" / "queen" / "keeper.token"
    missing = invoke("config", "show")
    assert missing.exit_code == 0, missing.stderr
    assert f"# token: none  # token_file {default} does not exist" in missing.stdout

    secret = "rbee_k_from-a-file-0123456789"
    write_private_file(default, secret + "\n")
    found = invoke("config", "show")
    assert f"# token: ***  # file {default}\n" in found.stdout
    parsed = json.loads(invoke("config", "show", "--json").stdout)
    assert parsed["token"] == "***" and parsed["token_source"] == f"file {default}"

    loose = tmp_path / "loose.token"
    loose.write_text(secret + "\n")
    loose.chmod(0o644)
    bad = invoke("config", "show", RBEE_TOKEN_FILE=str(loose))
    assert bad.exit_code == 0, bad.stderr
    assert "# token: none  # token_file (env RBEE_TOKEN_FILE):" in bad.stdout
    assert f"chmod 600 {loose}" in bad.stdout
    for shown in (missing, found, bad):
        assert secret not in shown.stdout + shown.stderr
        tomllib.loads(shown.stdout)
