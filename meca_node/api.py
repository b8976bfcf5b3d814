"""Python API for scripts: run tasks on the network through the local node.

A node must be running (``meca-node start --role client``); this talks to it through its
control API (the address and token in its data dir), as the ``meca-node`` command does::

    import meca_node.api as meca

    client = meca.Client()  # the node of the default data dir (or Client("~/.meca-b"))
    r = client.run("echo", {"input": "hi"}, max_price=5)
    print(r.output, r.provider, r.paid)

    results = client.map("primes", [{"limit": n} for n in range(100)], concurrency=8)
    print([r.output for r in results])

In trio code use ``AsyncClient``: the same methods, awaited. ``map`` runs at most
``concurrency`` jobs at once and returns the results in input order; a failed job raises
:class:`JobError` (after cancelling the others) unless ``return_exceptions=True``, which
puts the ``JobError`` in that input's place instead.

An input is ``bytes`` (sent as is), ``str`` (UTF-8), or anything JSON can encode. Each job
is matched, waits while providers are busy, fails over and is paid exactly as with
``meca-node run``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from meca_node.cli.config import ConfigError, load_config
from meca_node.control import ControlClient, ControlError

__all__ = ["AsyncClient", "Client", "JobError", "Result"]

MAX_CONCURRENCY = 64


@dataclass(frozen=True, slots=True)
class Result:
    """A job's checked output and who ran it for how much."""

    output: bytes
    provider: str
    price: int
    paid: int
    seconds: float
    #: with ``replicas`` > 1: each provider's part (``provider``, ``sha256``, ``size``,
    #: ``paid``, ``outcome``: paid / refused / failed: reason)
    replicas: tuple[dict, ...] = ()

    def json(self) -> Any:
        return json.loads(self.output)

    def text(self) -> str:
        return self.output.decode()


class JobError(Exception):
    """A job that gave no output: ``reason`` is typed (``no_fit``, ``busy``, ``deadline``,
    ``balance``, ...), ``detail`` says why and what to do."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _body(task: str, data: Any, max_price: int, timeout: float, provider: str | None,
          replicas: int = 1) -> dict:
    if isinstance(data, bytes):
        raw = data
    elif isinstance(data, str):
        raw = data.encode()
    else:
        raw = json.dumps(data).encode()
    return {"task": task, "input_b64": base64.b64encode(raw).decode(),
            "max_price": max_price, "timeout_s": timeout, "provider": provider or "",
            "replicas": replicas}


def _run(control: ControlClient, body: dict) -> Result:
    """One job through the node, blocking (its progress lines are skipped)."""
    done = error = None
    try:
        with control.stream("POST", "/v1/jobs/run", body) as response:
            for line in response.iter_lines():
                if line.strip():
                    doc = json.loads(line)
                    done = doc.get("done", done)
                    error = doc.get("error", error)
    except ControlError as exc:
        raise JobError("node", str(exc)) from None
    if error is not None:
        reason, _, detail = str(error).partition(": ")
        raise JobError(reason, detail or str(error))
    if done is None:
        raise JobError("node", "the node ended the answer without a result (did it stop?)")
    return Result(base64.b64decode(done["output_b64"]), done["provider"], done["price"],
                  done.get("paid", 0), done["seconds"], tuple(done.get("replicas", ())))


class AsyncClient:
    """The trio API (see the module docstring)."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        flags = {"data_dir": Path(data_dir).expanduser()} if data_dir is not None else {}
        try:
            cfg = load_config(None, os.environ, flags)
            self._control = ControlClient(cfg.data_dir, timeout_s=10.0)
        except (ConfigError, ControlError) as exc:
            raise JobError("node", str(exc)) from None

    async def run(self, task: str, input: Any, *, max_price: int = 100,
                  timeout: float = 120.0, provider: str | None = None,
                  replicas: int = 1) -> Result:
        """Run ``task`` (offer id, name or name@key-prefix) on ``input``; with ``replicas``
        > 1 on that many providers at once, paying only those in the majority (the
        result's ``replicas`` says who answered what)."""
        body = _body(task, input, max_price, timeout, provider, replicas)
        return await trio.to_thread.run_sync(partial(_run, self._control, body),
                                             abandon_on_cancel=True)

    async def map(self, task: str, inputs: Iterable[Any], *, concurrency: int = 8,
                  return_exceptions: bool = False, **kw) -> list[Any]:
        """``run`` over every input, at most ``concurrency`` at once; results in order."""
        items = list(inputs)
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}, got {concurrency}")
        results: list[Any] = [None] * len(items)
        limiter = trio.CapacityLimiter(concurrency)
        first: list[JobError] = []

        async def one(i: int, cancel: trio.CancelScope) -> None:
            async with limiter:
                try:
                    results[i] = await self.run(task, items[i], **kw)
                except JobError as exc:
                    if not return_exceptions:
                        first.append(exc)
                        cancel.cancel()
                    results[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(len(items)):
                nursery.start_soon(one, i, nursery.cancel_scope)
        if first:
            raise first[0]
        return results


class Client:
    """The blocking API for plain scripts: ``AsyncClient``'s methods, each in its own
    ``trio.run``."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self._async = AsyncClient(data_dir)

    def run(self, task: str, input: Any, **kw) -> Result:
        return trio.run(partial(self._async.run, task, input, **kw))

    def map(self, task: str, inputs: Iterable[Any], **kw) -> list[Any]:
        return trio.run(partial(self._async.map, task, inputs, **kw))
