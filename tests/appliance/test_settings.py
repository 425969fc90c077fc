"""Settings come from defaults, a TOML file, the environment and flags; bad values name the setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance.settings import Settings, SettingsError, describe, load_settings, load_settings_with_sources


def test_defaults_suit_a_pi() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.port == 8080 and settings.lease_ttl_s == 60 and settings.lease_renew_s == 20


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    (tmp_path / "stockverify.toml").write_text('port = 9000\nstore_name = "From File"\nlease_ttl_s = 90\n')
    env = {"STOCKVERIFY_DATA_DIR": str(tmp_path), "STOCKVERIFY_PORT": "9100"}
    settings = load_settings({"port": 9200, "host": None}, environ=env)
    assert settings.data_dir == tmp_path
    assert settings.store_name == "From File"
    assert settings.lease_ttl_s == 90
    assert settings.port == 9200  # flag beats environment beats file


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"STOCKVERIFY_PORT": "eighty"}, "'port' (from environment variable STOCKVERIFY_PORT)"),
        ({"STOCKVERIFY_ROLE": "cloud"}, "'role'"),
        ({"STOCKVERIFY_STORE_ID": "has space"}, "'store_id'"),
        ({"STOCKVERIFY_DEMO": "perhaps"}, "'demo'"),
        ({"STOCKVERIFY_LEASE_RENEW_S": "60"}, "'lease_renew_s'"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=env)
    assert named in str(caught.value)


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "box.toml"
    path.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="'prot'"):
        load_settings(environ={}, config_file=path)


def test_every_setting_is_declared_with_a_parser_and_help() -> None:
    declared = dataclasses.fields(Settings)
    for spec in declared:
        assert callable(spec.metadata.get("parse")), spec.name
        assert str(spec.metadata.get("help", "")).strip(), spec.name
    assert [info.name for info in describe()] == [spec.name for spec in declared]
    assert {info.name for info in describe() if info.secret} == {"store_secret", "hq_secret"}
    assert all(info.default == getattr(Settings(), info.name) for info in describe())


def test_sources_name_the_layer_each_value_came_from(tmp_path: Path) -> None:
    path = tmp_path / "stockverify.toml"
    path.write_text('port = 9000\nstore_name = "From File"\nlease_ttl_s = 90\n')
    env = {"STOCKVERIFY_DATA_DIR": str(tmp_path), "STOCKVERIFY_PORT": "9100", "STOCKVERIFY_HQ_MODE": "counters"}
    settings, sources = load_settings_with_sources({"port": 9200, "host": None}, environ=env)
    assert settings == load_settings({"port": 9200, "host": None}, environ=env)
    assert sources["port"] == "command line"
    assert sources["store_name"] == sources["lease_ttl_s"] == str(path)
    assert sources["hq_mode"] == "environment variable STOCKVERIFY_HQ_MODE"
    assert sources["data_dir"] == "environment variable STOCKVERIFY_DATA_DIR"
    assert sources["host"] == sources["store_secret"] == "default"
    assert set(sources) == {spec.name for spec in dataclasses.fields(Settings)}


def test_settings_stay_cheap_to_replace() -> None:
    settings = dataclasses.replace(Settings(), port=1234)
    assert settings.port == 1234 and settings.db_path == Path("data") / "store.db"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
