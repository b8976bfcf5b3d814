"""Config precedence (flags > env > file > default), validation, and sources."""

from __future__ import annotations


import tomllib
from pathlib import Path

import pytest

from meca_node.cli.config import OPTIONS, ConfigError, env_name, load_config, toml_value


def test_defaults_and_sources(tmp_path):
    cfg = load_config(None, {}, {"data_dir": tmp_path})
    assert cfg["roles"] == ["client"]
    assert cfg["mdns"] is False
    assert cfg.sources["roles"] == "default"
    assert cfg.sources["data_dir"] == "flag"
    assert cfg.genesis_path == tmp_path / "genesis.json"
    assert cfg.caps.gossip_message == 64 * 1024


def test_flag_beats_env_beats_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('price = 1\nadvert_interval_s = 9\nroles = ["provider"]\n'
                 '[caps]\ngossip_message = 1000\n')
    env = {env_name("price"): "2", env_name("roles"): "developer,client"}
    cfg = load_config(f, env, {"price": 3, "data_dir": tmp_path})
    assert cfg["price"] == 3 and cfg.sources["price"] == "flag"
    assert cfg["roles"] == ["developer", "client"] and cfg.sources["roles"] == "env MECA_ROLES"
    assert cfg["advert_interval_s"] == 9.0 and cfg.sources["advert_interval_s"].startswith("file")
    assert cfg.caps.gossip_message == 1000


def test_config_toml_in_data_dir_is_read(tmp_path):
    (tmp_path / "config.toml").write_text("price = 7\n")
    assert load_config(None, {}, {"data_dir": tmp_path})["price"] == 7


@pytest.mark.parametrize("text,needle", [
    ("bogus = 1\n", "unknown config key 'bogus'"),
    ("price = -1\n", "price"),
    ("price = 'x'\n", "price"),
    ("roles = ['miner']\n", "roles"),
    ("mdns = 'perhaps'\n", "mdns"),
    ("log_level = 'loud'\n", "log_level"),
    ("[caps]\nqueue = 'big'\n", "caps.queue"),
    ("warm_pool_s = -1\n", "warm_pool_s"),
    ("warm_pool_s = 'nan'\n", "warm_pool_s"),
    ("warm_pool_max = -2\n", "warm_pool_max"),
    ("advert_interval_s = 0\n", "advert_interval_s"),
    ("[match]\nprice = -1\n", "match.price"),
    ("not toml =\n", "not valid TOML"),
    ("log_backups = 0\n", "log_backups"),
    ("log_max_mb = 0\n", "log_max_mb"),
    ("log_file = 3\n", "log_file"),
])
def test_invalid_config_names_the_key(tmp_path, text, needle):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f, {}, {"data_dir": tmp_path})
    assert needle in str(e.value)


def test_warm_pool_can_be_turned_off_with_zero(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("warm_pool_s = 0\nwarm_pool_max = 0\n")
    cfg = load_config(f, {}, {"data_dir": tmp_path})
    assert cfg["warm_pool_s"] == 0.0 and cfg["warm_pool_max"] == 0
    defaults = load_config(None, {}, {"data_dir": tmp_path})
    assert defaults["warm_pool_s"] == 300.0 and defaults["warm_pool_max"] == 4


def test_every_option_has_an_env_name_and_doc():
    for o in OPTIONS:
        assert env_name(o.key).startswith("MECA_") and o.doc


def test_matching_weights_from_the_match_section(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[match]\nprice = 0\ncached = 2.5\n")
    w = load_config(f, {}, {"data_dir": tmp_path}).weights
    assert (w.price, w.cached, w.reputation) == (0.0, 2.5, 1.0)  # the rest: defaults


def test_each_layer_beats_the_one_below(tmp_path):
    """For one key at a time: default < file < env < flag, with the source named."""
    f = tmp_path / "c.toml"
    f.write_text("price = 1\n")
    env = {env_name("price"): "2"}
    assert load_config(None, {}, {"data_dir": tmp_path}).sources["price"] == "default"
    layers = [(f, {}, {}, 1, f"file {f}"), (f, env, {}, 2, "env MECA_PRICE"),
              (f, env, {"price": 3}, 3, "flag"), (None, env, {}, 2, "env MECA_PRICE"),
              (None, {}, {"price": 3}, 3, "flag")]
    for file, environ, flags, value, source in layers:
        cfg = load_config(file, environ, {"data_dir": tmp_path, **flags})
        assert (cfg["price"], cfg.sources["price"]) == (value, source)
        assert cfg.file == file


@pytest.mark.parametrize("env,needle", [
    ({"MECA_PRICE": "cheap"}, "price (from env MECA_PRICE)"),
    ({"MECA_CAPS_QUEUE": "-1"}, "caps.queue (from env MECA_CAPS_QUEUE)"),
    ({"MECA_LOG_BACKUPS": "0"}, "log_backups (from env MECA_LOG_BACKUPS)"),
    ({"MECA_ROLES": "miner"}, "roles (from env MECA_ROLES)"),
])
def test_a_bad_env_value_names_the_variable(tmp_path, env, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, env, {"data_dir": tmp_path})
    assert needle in str(e.value)


def test_unknown_key_in_a_file_names_key_and_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[caps]\nbogus = 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, {}, {"data_dir": tmp_path})
    assert "'caps.bogus'" in str(e.value) and str(f) in str(e.value)


@pytest.mark.parametrize("value", [
    0, 7, 2.5, 1e-05, 30.0, float("inf"), True, False, "", "plain", 'quote " and \\ back',
    "tab\tnew\nline", "ünïcødé ☃", [], ["a", "b,c"], Path("/var/lib/meca node")])
def test_toml_value_reads_back(value):
    got = tomllib.loads(f"x = {toml_value(value)}\n")["x"]
    assert got == (str(value) if isinstance(value, Path) else value)
