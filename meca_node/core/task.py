"""The task folder format (shared/TASK_FORMAT.md): pure checks over what a folder holds.

The caller reads the folder (see ``meca_node.store.taskdir``) and passes its files here;
every problem found is reported at once, each naming the file, the field and the fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

REQUIRED_FILES = ("Dockerfile", "description.txt", "name.txt", "example_input.bin",
                  "example_output.bin", "config.json")
REQUIRED_DIRS = ("src",)
CONFIG_DEFAULTS = {"cpu": 1, "mem": 128, "use_gpu": False, "gpu_count": 0}
MAX_NAME = 128
MAX_DESCRIPTION = 8192
MAX_EXAMPLE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Problem:
    file: str
    field: str
    message: str
    fix: str
    fatal: bool = True

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}: " if self.field else f"{self.file}: "
        return f"{where}{self.message} (fix: {self.fix})"


@dataclass(frozen=True)
class TaskResources:
    cpu: float
    mem_mib: int
    use_gpu: bool
    gpu_count: int

    @property
    def cpu_milli(self) -> int:
        """CPU in millicores for the wire, rounded up so a provider never offers less."""
        return max(1, math.ceil(self.cpu * 1000 - 1e-9))

    @property
    def nano_cpus(self) -> int:
        """Docker's NanoCpus for this CPU share."""
        return max(1, round(self.cpu * 1e9))


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    resources: TaskResources
    example_input: bytes
    example_output: bytes
    dockerfile: str
    warnings: tuple[Problem, ...] = field(default=())


class TaskInvalid(Exception):
    """The folder breaks the task format; ``problems`` lists every breach."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def _text(problems: list[Problem], name: str, data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(name, "", f"is not UTF-8 text (byte {exc.start})",
                                "save the file as UTF-8"))
        return None


def _number(problems, key, value, *, integer: bool) -> float | int | None:
    where = f"resource.{key}"
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(Problem("config.json", where, f"must be {kind}, got {value!r}",
                                f'write e.g. "{key}": {CONFIG_DEFAULTS[key]}'))
        return None
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(Problem("config.json", where, f"must be finite, got {value!r}",
                                f'write e.g. "{key}": {CONFIG_DEFAULTS[key]}'))
        return None
    if integer and isinstance(value, float):
        if not value.is_integer():
            problems.append(Problem("config.json", where, f"must be {kind} of MiB, got {value}",
                                    f'round it, e.g. "{key}": {math.ceil(value)}'))
            return None
        value = int(value)
    if value <= 0:
        problems.append(Problem("config.json", where, f"must be > 0, got {value}",
                                f'use a positive value, e.g. "{key}": {CONFIG_DEFAULTS[key]}'))
        return None
    return value


def parse_config(data: bytes) -> tuple[TaskResources | None, list[Problem]]:
    """config.json with defaults applied; unknown fields, wrong types and bad values are problems."""
    problems: list[Problem] = []
    text = _text(problems, "config.json", data)
    if text is None:
        return None, problems

    def no_constants(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        doc = json.loads(text or "{}", parse_constant=no_constants)
    except ValueError as exc:
        return None, [Problem("config.json", "", f"is not valid JSON: {exc}",
                              'write e.g. {"resource": {"cpu": 1, "mem": 128}}')]
    if not isinstance(doc, dict):
        return None, [Problem("config.json", "", "must be a JSON object",
                              'write e.g. {"resource": {"cpu": 1, "mem": 128}}')]
    for key in sorted(set(doc) - {"resource"}):
        problems.append(Problem("config.json", key, "unknown field",
                                'remove it; only "resource" is allowed at the top level'))
    resource = doc.get("resource", {})
    if not isinstance(resource, dict):
        problems.append(Problem("config.json", "resource", "must be an object",
                                'write e.g. "resource": {"cpu": 1, "mem": 128}'))
        return None, problems
    for key in sorted(set(resource) - set(CONFIG_DEFAULTS)):
        problems.append(Problem("config.json", f"resource.{key}", "unknown field",
                                f"remove it; allowed: {', '.join(CONFIG_DEFAULTS)}"))
    values = {**CONFIG_DEFAULTS, **resource}
    cpu = _number(problems, "cpu", values["cpu"], integer=False)
    mem = _number(problems, "mem", values["mem"], integer=True)
    use_gpu = values["use_gpu"]
    if not isinstance(use_gpu, bool):
        problems.append(Problem("config.json", "resource.use_gpu",
                                f"must be true or false, got {use_gpu!r}",
                                'write "use_gpu": false (or true with a gpu_count)'))
        use_gpu = None
    gpu_count = values["gpu_count"]
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 0:
        problems.append(Problem("config.json", "resource.gpu_count",
                                f"must be a whole number >= 0, got {gpu_count!r}",
                                'write e.g. "gpu_count": 0'))
        gpu_count = None
    if use_gpu is True and gpu_count == 0:
        problems.append(Problem("config.json", "resource.gpu_count",
                                "is 0 while use_gpu is true",
                                'set "gpu_count" to how many GPUs the task needs, or '
                                '"use_gpu": false'))
    if use_gpu is False and gpu_count:
        problems.append(Problem("config.json", "resource.use_gpu",
                                f"is false while gpu_count is {gpu_count}",
                                'set "use_gpu": true, or "gpu_count": 0'))
    if cpu is not None and cpu < 0.001:
        problems.append(Problem("config.json", "resource.cpu",
                                f"{cpu} is below the smallest share, 0.001 CPU",
                                'use at least "cpu": 0.001'))
    if problems:
        return None, problems
    return TaskResources(float(cpu), int(mem), bool(use_gpu), int(gpu_count)), []


def check_task(files: dict[str, bytes | None], dirs: dict[str, bool]) -> TaskSpec:
    """Validate a task folder. ``files`` maps each required file name to its bytes (None when
    missing); ``dirs`` says which required directories exist and are not empty."""
    problems: list[Problem] = []
    for name in REQUIRED_FILES:
        if files.get(name) is None:
            problems.append(Problem(name, "", "is missing",
                                    f"create {name} (see `meca-node task init` for an example)"))
    for name in REQUIRED_DIRS:
        if not dirs.get(name):
            problems.append(Problem(f"{name}/", "", "is missing or empty",
                                    f"put the app's sources in {name}/"))
    warnings: list[Problem] = []
    name = description = dockerfile = None
    if (raw := files.get("name.txt")) is not None:
        name = _text(problems, "name.txt", raw)
        if name is not None:
            lines = [ln for ln in name.splitlines() if ln.strip()]
            if len(lines) != 1:
                problems.append(Problem("name.txt", "", f"must be one non-empty line, has "
                                        f"{len(lines)}", "write the task's name on one line"))
                name = None
            else:
                name = lines[0].strip()
                if len(name.encode()) > MAX_NAME:
                    problems.append(Problem("name.txt", "", f"is longer than {MAX_NAME} bytes",
                                            "shorten the name"))
                    name = None
    if (raw := files.get("description.txt")) is not None:
        description = _text(problems, "description.txt", raw)
        if description is not None and len(raw) > MAX_DESCRIPTION:
            problems.append(Problem("description.txt", "", f"is longer than {MAX_DESCRIPTION} "
                                    "bytes", "shorten the description"))
    if (raw := files.get("Dockerfile")) is not None:
        dockerfile = _text(problems, "Dockerfile", raw)
        if dockerfile is not None:
            instructions = [ln.split(None, 1)[0].upper() for ln in dockerfile.splitlines()
                            if ln.strip() and not ln.lstrip().startswith("#")]
            if "FROM" not in instructions:
                problems.append(Problem("Dockerfile", "FROM", "has no FROM instruction",
                                        "start it with e.g. FROM python:3.9-slim"))
            if not any(ln.split()[:2] in (["EXPOSE", "8080"], ["EXPOSE", "8080/tcp"])
                       for ln in (x.strip().upper() for x in dockerfile.splitlines())):
                warnings.append(Problem("Dockerfile", "EXPOSE",
                                        "does not EXPOSE 8080; the app must serve on 8080",
                                        "add EXPOSE 8080", fatal=False))
    example_input = files.get("example_input.bin")
    if example_input is not None:
        if len(example_input) > MAX_EXAMPLE:
            problems.append(Problem("example_input.bin", "", f"is larger than {MAX_EXAMPLE} "
                                    "bytes", "use a smaller example"))
        else:
            try:
                json.loads(example_input.decode("utf-8"),
                           parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            except (UnicodeDecodeError, ValueError) as exc:
                problems.append(Problem("example_input.bin", "",
                                        f"is not a JSON value (the POST body must be JSON): "
                                        f"{exc}", 'write a JSON value, e.g. {"input": "hello"}'))
    example_output = files.get("example_output.bin")
    if example_output is not None and len(example_output) > MAX_EXAMPLE:
        problems.append(Problem("example_output.bin", "", f"is larger than {MAX_EXAMPLE} bytes",
                                "use a smaller example"))
    resources = None
    if (raw := files.get("config.json")) is not None:
        resources, config_problems = parse_config(raw)
        problems += config_problems
    if problems:
        raise TaskInvalid(problems)
    assert name is not None and description is not None and dockerfile is not None
    assert resources is not None and example_input is not None and example_output is not None
    return TaskSpec(name, description, resources, example_input, example_output, dockerfile,
                    tuple(warnings))
