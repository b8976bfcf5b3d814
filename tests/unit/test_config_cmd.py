"""`meca-node config init|show|keys`: the commented file loads to exactly the defaults, show
reports every layer's source, invalid config names the key and where it came from."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
from typer.testing import CliRunner

from meca_node.cli.config import OPTIONS, env_name, load_config
from meca_node.cli.config_cmd import CONFIG_FLAGS
from meca_node.cli.main import app

SETTING = re.compile(r"^#(\S+) = (.*)$")


def cli(*args: str, env: dict[str, str] | None = None):
    """Run the command in this process with only ``env``'s MECA_* variables set."""
    import os

    clean = {k: None for k in os.environ if k.startswith("MECA_")}
    return CliRunner().invoke(app, list(args), env={**clean, **(env or {})})


def test_init_writes_a_file_that_loads_to_exactly_the_defaults(tmp_path):
    r = cli("config", "init", "--data-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    path = tmp_path / "config.toml"
    assert f"wrote {path}" in r.output
    empty = tmp_path / "elsewhere"  # a data dir without a config.toml
    written = load_config(path, {}, {"data_dir": empty})
    defaults = load_config(None, {}, {"data_dir": empty})
    assert written.values == defaults.values
    assert written.file == path and defaults.file is None
    assert {k for k, s in written.sources.items() if s != "default"} == {"data_dir"}


def test_init_lists_every_option_with_doc_env_and_default(tmp_path):
    cli("config", "init", "--data-dir", str(tmp_path))
    text = (tmp_path / "config.toml").read_text()
    flat = " ".join(line.lstrip("# ") for line in text.splitlines())
    for o in OPTIONS:
        name = o.key.split(".", 1)[-1]
        assert " ".join(o.doc.split()) in flat, o.key
        assert f"env {env_name(o.key)}" in text, o.key
        shown = f"# {name}: unset by default" if o.default is None else f"#{name} = "
        assert shown in text, o.key


def test_uncommenting_every_setting_still_gives_the_defaults(tmp_path):
    """The defaults the file shows are the real ones: with every setting line uncommented,
    each key comes from the file and equals its default; match.* and caps.* are tables."""
    cli("config", "init", "--data-dir", str(tmp_path))
    lines = (tmp_path / "config.toml").read_text().splitlines()
    live = tmp_path / "live.toml"
    live.write_text("\n".join(SETTING.sub(r"\1 = \2", line) for line in lines) + "\n")
    doc = tomllib.loads(live.read_text())
    assert set(doc["match"]) == {o.key[6:] for o in OPTIONS if o.key.startswith("match.")}
    assert set(doc["caps"]) == {o.key[5:] for o in OPTIONS if o.key.startswith("caps.")}
    cfg = load_config(live, {}, {"data_dir": tmp_path / "elsewhere"})
    defaults = load_config(None, {}, {"data_dir": tmp_path / "elsewhere"})
    assert cfg.values == defaults.values
    for o in OPTIONS:
        if o.default is not None:
            assert cfg.sources[o.key] == f"file {live}", o.key


def test_init_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("price = 5\n")
    r = cli("config", "init", "--data-dir", str(tmp_path))
    assert r.exit_code == 2 and "--force" in r.output and "exists" in r.output
    assert path.read_text() == "price = 5\n"
    r = cli("config", "init", "--data-dir", str(tmp_path), "--force")
    assert r.exit_code == 0, r.output
    assert load_config(path, {}, {"data_dir": tmp_path})["price"] == 0


def test_init_with_config_path_and_data_dir_from_env(tmp_path):
    other = tmp_path / "etc" / "meca.toml"
    assert cli("config", "init", "--config", str(other)).exit_code == 0
    assert other.exists()
    r = cli("config", "init", env={env_name("data_dir"): str(tmp_path / "d")})
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d" / "config.toml").exists()


def test_show_reports_the_source_of_every_layer(tmp_path):
    """default < file < env < flag, each key's source named (file PATH, env VAR, flag)."""
    f = tmp_path / "c.toml"
    f.write_text('price = 1\ncontrol_port = 5\nadvert_interval_s = 9\nlog_level = "debug"\n'
                 '[match]\nlatency = 3.5\n[caps]\nqueue = 77\n')
    env = {env_name("price"): "2", env_name("control_port"): "6",
           env_name("caps.queue"): "88"}
    r = cli("config", "show", "--json", "--config", str(f), "--data-dir", str(tmp_path),
            "--control-port", "7", "--role", "provider", "--role", "developer",
            "--listen", "/ip4/127.0.0.1/tcp/0", "--log-level", "warning", env=env)
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    opts = shown["options"]
    assert shown["file"] == str(f)

    def is_(key, value, source):
        assert (opts[key]["value"], opts[key]["source"]) == (value, source), key

    is_("control_port", 7, "flag")                       # flag beats env and file
    is_("price", 2, f"env {env_name('price')}")          # env beats file
    is_("caps.queue", 88, f"env {env_name('caps.queue')}")
    is_("advert_interval_s", 9.0, f"file {f}")           # file beats default
    is_("match.latency", 3.5, f"file {f}")
    is_("log_level", "warning", "flag")
    is_("roles", ["provider", "developer"], "flag")
    is_("listen", ["/ip4/127.0.0.1/tcp/0"], "flag")
    is_("data_dir", str(tmp_path), "flag")
    is_("mdns", False, "default")
    assert set(opts) == {o.key for o in OPTIONS}
    assert all(opts[o.key]["env"] == env_name(o.key) for o in OPTIONS)


def test_show_text_names_the_file_and_each_source(tmp_path):
    (tmp_path / "config.toml").write_text("price = 3\n")
    r = cli("config", "show", "--data-dir", str(tmp_path), "--mdns")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == f"config file: {tmp_path / 'config.toml'}"
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {o.key for o in OPTIONS}
    assert rows["price"].split() == ["price", "3", f"file {tmp_path / 'config.toml'}"
                                     .split()[0], str(tmp_path / "config.toml")]
    assert rows["mdns"].split() == ["mdns", "true", "flag"]
    assert rows["offer_cpu"].split() == ["offer_cpu", "unset", "default"]


def _flags(*path: str) -> set[str]:
    import typer.main

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)}


def test_show_and_start_take_the_same_config_flags():
    start, show = _flags("start"), _flags("config", "show")
    shared = {"--config", "--role", "--data-dir", "--listen", "--announce", "--bootstrap",
              "--genesis", "--mdns", "--no-mdns", "--control-port", "--advert-interval",
              "--log-level", "--log-file"}
    assert shared <= start and shared <= show
    assert show - shared == {"--json"}
    assert len({f.key for f in CONFIG_FLAGS}) == len(CONFIG_FLAGS)
    assert {f.key for f in CONFIG_FLAGS} <= {o.key for o in OPTIONS}


@pytest.mark.parametrize("args,env,needles", [
    (["--config", "{d}/c.toml"], {}, ["unknown config key 'bogus'", "file {d}/c.toml"]),
    ([], {"MECA_PRICE": "cheap"}, ["price", "env MECA_PRICE", "'cheap'"]),
    ([], {"MECA_MDNS": "perhaps"}, ["mdns", "env MECA_MDNS", "true or false"]),
    (["--log-level", "loud"], {}, ["log_level", "from flag"]),
    (["--role", "miner"], {}, ["roles", "from flag", "miner"]),
    (["--advert-interval", "0"], {}, ["advert_interval_s", "from flag", "must be > 0"]),
    (["--config", "{d}/bad.toml"], {}, ["config file {d}/bad.toml is not valid TOML"]),
    (["--config", "{d}/missing.toml"], {}, ["config file {d}/missing.toml does not exist"]),
])
def test_invalid_config_names_the_key_and_source(tmp_path, args, env, needles):
    (tmp_path / "c.toml").write_text("bogus = 1\n")
    (tmp_path / "bad.toml").write_text("price = = 3\n")
    d = str(tmp_path)
    for command in (["config", "show"], ["start"]):  # start refuses before anything runs
        r = cli(*command, "--data-dir", d, *[a.replace("{d}", d) for a in args], env=env)
        assert r.exit_code == 2, (command, r.output)
        text = " ".join(r.output.split())
        for needle in needles:
            assert needle.replace("{d}", d) in text, (command, needle, text)


def test_a_flag_of_the_wrong_type_is_a_usage_error(tmp_path):
    r = cli("config", "show", "--data-dir", str(tmp_path), "--control-port", "eighty")
    assert r.exit_code == 2 and "--control-port" in r.output


def test_config_keys_and_its_hidden_old_name():
    new, old = cli("config", "keys"), cli("config-keys")
    assert new.exit_code == old.exit_code == 0
    assert new.stdout == old.stdout
    assert [line.split()[0] for line in new.stdout.splitlines()] == [o.key for o in OPTIONS]
    assert "config-keys" not in cli("--help").output


def test_start_takes_log_format_flags():
    assert {"--log-json", "--log-pretty", "--json-logs", "--pretty-logs"} <= _flags("start")
