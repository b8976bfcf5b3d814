"""The task folder format (shared/TASK_FORMAT.md): every rule, table-driven, no Docker."""

from __future__ import annotations

import json

import pytest

from meca_node.core.task import (
    REQUIRED_FILES, TaskInvalid, TaskResources, check_task, parse_config,
)

GOOD = {
    "Dockerfile": b"FROM python:3.9-slim\nCOPY src/ /app/\nEXPOSE 8080\nCMD [\"python\"]\n",
    "description.txt": b"echo\n",
    "name.txt": b"echo\n",
    "example_input.bin": b'{"input": "hi"}',
    "example_output.bin": b"hi",
    "config.json": b'{"resource": {"cpu": 0.5, "mem": 64}}',
}


def folder(**changes):
    files = dict(GOOD)
    for k, v in changes.items():
        files[k.replace("__", ".")] = v
    return files


def problems_of(files, dirs=None):
    with pytest.raises(TaskInvalid) as e:
        check_task(files, dirs if dirs is not None else {"src": True})
    return [str(p) for p in e.value.problems]


def test_a_good_folder_gives_its_spec():
    spec = check_task(GOOD, {"src": True})
    assert spec.name == "echo" and spec.example_output == b"hi"
    assert spec.resources == TaskResources(0.5, 64, False, 0)
    assert spec.resources.cpu_milli == 500 and spec.resources.nano_cpus == 500_000_000
    assert spec.warnings == ()


@pytest.mark.parametrize("missing", REQUIRED_FILES)
def test_each_missing_file_is_named(missing):
    assert any(p.startswith(f"{missing}: is missing") for p in
               problems_of(folder(**{missing.replace(".", "__"): None})))


def test_missing_or_empty_src_and_all_problems_at_once():
    found = problems_of(folder(name__txt=None, config__json=b"[]"), {"src": False})
    assert len(found) == 3
    assert any(p.startswith("src/: is missing or empty") for p in found)


@pytest.mark.parametrize("config,defaults", [
    (b"{}", TaskResources(1.0, 128, False, 0)),
    (b"", TaskResources(1.0, 128, False, 0)),
    (b'{"resource": {}}', TaskResources(1.0, 128, False, 0)),
    (b'{"resource": {"cpu": 2, "mem": 256.0}}', TaskResources(2.0, 256, False, 0)),
    (b'{"resource": {"use_gpu": true, "gpu_count": 2}}', TaskResources(1.0, 128, True, 2)),
    (b'{"resource": {"cpu": 0.001}}', TaskResources(0.001, 128, False, 0)),
])
def test_config_defaults_apply_to_absent_fields(config, defaults):
    assert parse_config(config) == (defaults, [])


@pytest.mark.parametrize("config,needle", [
    (b"{", "config.json: is not valid JSON"),
    (b"[1]", "config.json: must be a JSON object"),
    (b'{"resource": 3}', "config.json: resource: must be an object"),
    (b'{"extra": 1}', "config.json: extra: unknown field"),
    (b'{"resource": {"disk": 1}}', "config.json: resource.disk: unknown field"),
    (b'{"resource": {"cpu": 0}}', "config.json: resource.cpu: must be > 0"),
    (b'{"resource": {"cpu": -1}}', "config.json: resource.cpu: must be > 0"),
    (b'{"resource": {"cpu": "1"}}', "config.json: resource.cpu: must be a number"),
    (b'{"resource": {"cpu": true}}', "config.json: resource.cpu: must be a number"),
    (b'{"resource": {"cpu": NaN}}', "config.json: is not valid JSON"),
    (b'{"resource": {"cpu": 0.0001}}', "below the smallest share"),
    (b'{"resource": {"mem": 0}}', "config.json: resource.mem: must be > 0"),
    (b'{"resource": {"mem": -5}}', "config.json: resource.mem: must be > 0"),
    (b'{"resource": {"mem": 1.5}}', "resource.mem: must be a whole number of MiB"),
    (b'{"resource": {"mem": "128m"}}', "resource.mem: must be a whole number"),
    (b'{"resource": {"use_gpu": "yes"}}', "resource.use_gpu: must be true or false"),
    (b'{"resource": {"gpu_count": -1}}', "resource.gpu_count: must be a whole number >= 0"),
    (b'{"resource": {"gpu_count": 1.0}}', "resource.gpu_count: must be a whole number >= 0"),
    (b'{"resource": {"use_gpu": true}}', "resource.gpu_count: is 0 while use_gpu is true"),
    (b'{"resource": {"use_gpu": true, "gpu_count": 0}}', "is 0 while use_gpu is true"),
    (b'{"resource": {"gpu_count": 1}}', "resource.use_gpu: is false while gpu_count is 1"),
    (b"\xff{}", "config.json: is not UTF-8 text"),
])
def test_bad_config_names_file_field_and_fix(config, needle):
    resources, problems = parse_config(config)
    assert resources is None
    text = [str(p) for p in problems]
    assert any(needle in t for t in text), text
    assert all("(fix: " in t for t in text)


@pytest.mark.parametrize("change,needle", [
    ({"name__txt": b""}, "name.txt: must be one non-empty line, has 0"),
    ({"name__txt": b"a\nb\n"}, "name.txt: must be one non-empty line, has 2"),
    ({"name__txt": b"x" * 129}, "name.txt: is longer than 128 bytes"),
    ({"name__txt": b"\xff"}, "name.txt: is not UTF-8 text"),
    ({"description__txt": b"d" * 8193}, "description.txt: is longer than 8192 bytes"),
    ({"Dockerfile": b"# nothing\nRUN true\n"}, "Dockerfile: FROM: has no FROM instruction"),
    ({"example_input__bin": b"not json"}, "example_input.bin: is not a JSON value"),
    ({"example_input__bin": b"NaN"}, "example_input.bin: is not a JSON value"),
    ({"example_input__bin": b"\xff"}, "example_input.bin: is not a JSON value"),
])
def test_bad_files_are_named(change, needle):
    assert any(needle in p for p in problems_of(folder(**change)))


def test_any_json_value_is_a_valid_input_and_output_is_any_bytes():
    for value in (b"1", b'"text"', b"[1, 2]", b"null", json.dumps({"a": "é"}).encode()):
        assert check_task(folder(example_input__bin=value), {"src": True}).example_input == value
    assert check_task(folder(example_output__bin=b"\x00\xff"),
                      {"src": True}).example_output == b"\x00\xff"


def test_missing_expose_is_a_warning_not_an_error():
    spec = check_task(folder(Dockerfile=b"FROM python:3.9-slim\n"), {"src": True})
    assert [w.field for w in spec.warnings] == ["EXPOSE"]


def test_the_echo_example_is_what_task_init_writes():
    """examples/echo is the guide's task; `task init` writes the same folder (kept in step)."""
    from pathlib import Path

    from meca_node.cli.templates import PYTHON

    echo = Path(__file__).resolve().parents[2] / "examples" / "echo"
    for rel, content in PYTHON.items():
        if rel in ("name.txt", "description.txt"):
            continue
        assert (echo / rel).read_text() == content, rel
