"""Config precedence (flags > env > file > default), validation, and sources."""

from __future__ import annotations


import pytest

from meca_node.cli.config import OPTIONS, ConfigError, env_name, load_config


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
    assert cfg["roles"] == ["developer", "client"] and cfg.sources["roles"] == "env"
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
