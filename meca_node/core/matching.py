"""Which providers may run a job, and in what order: pure, deterministic, no I/O.

**Hard filters** (``unfit``): a provider is a candidate only if every one holds. Each failing
filter gives a typed :class:`Reason` (``code`` from ``REASON_CODES``, ``text`` naming the
field and both values), and *all* failing filters are reported, not the first only:

- ``role``: the advert says it is not a provider;
- ``stale``: its advert is older than ``Need.max_age_ms``;
- ``not_connected``: we hold no connection to it;
- ``refused``: it forked its account chain, or it is a proven cheat (a ``bad_output`` proof);
- ``not_allowed``: the client's allow-list of provider keys leaves it out;
- ``environment``, ``arch``: it lacks the offer's environment or is another architecture;
- ``gpu``, ``cpu``, ``mem``: fewer free than the offer needs;
- ``price``: its price plus the offer's fee is above the client's max.

**Ranking** (``rank``): fitting providers get a score, the weighted sum of parts that are
each in 0..1, higher is better: ``price`` (the cheapest fitting one gets 1, the dearest 0),
``benchmark`` (its score for the offer's environment over the best one's), ``cached`` (1
when the image is cached there: no pull), ``queue`` (1 / (1 + queue length)), ``latency``
(the fastest measured round trip over its own; 0.5 when not measured) and ``reputation``
(as given, 0..1; 0.5 for a provider we know nothing of). Weights are config. Ties go to
the lower price, then a per-client order of the peer ids (``rank``'s ``salt``), so the
order is total and reproducible, and clients do not pile onto one of equal providers.

A provider whose only failing filters are free GPU, CPU or memory, and whose hardware
holds the job when idle, is ``busy`` (``Unfit.busy``): a client waits for it rather than
failing.

**When nothing fits** ``summary`` counts the reasons over every candidate:
``"4 hosts: 2 have no docker-gpu, 1 has 96 MiB free < 128 MiB, 1 asks 5 + fee 0 > max 3"``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field

from meca_node.wire import HostAdvert, TaskOffer

#: every ``Reason.code``, in the order the filters run
REASON_CODES = ("role", "stale", "not_connected", "refused", "not_allowed", "environment",
                "arch", "gpu", "cpu", "mem", "price")
#: every part of a score
PARTS = ("price", "benchmark", "cached", "queue", "latency", "reputation")


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    text: str  # a phrase after the host: "has 96 MiB free < 128 MiB"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider as the client sees it."""

    peer_id: str
    advert: HostAdvert
    age_ms: int  # since its advert was signed
    connected: bool = True
    latency_ms: float | None = None  # measured round trip, when we have one
    reputation: float = 0.5  # 0..1, from the client's own history with it
    refused: str = ""  # why the network refuses it (a fork, a bad_output proof), if it does
    #: jobs of this client there right now (sent or running): its advert may not show them
    #: yet, so they count in its queue for the ranking
    pending: int = 0


@dataclass(frozen=True, slots=True)
class Need:
    """What the job needs: the offer, the client's max price, its allow-list of provider
    peer ids (None: any), and how old an advert may be."""

    offer: TaskOffer
    max_price: int
    max_age_ms: int
    allow: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Weights:
    price: float = 1.0
    benchmark: float = 0.5
    cached: float = 0.5
    queue: float = 0.5
    latency: float = 0.3
    reputation: float = 1.0

    def __post_init__(self) -> None:
        for name in PARTS:
            if getattr(self, name) < 0:
                raise ValueError(f"matching weight {name} must be >= 0, "
                                 f"got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class Ranked:
    peer_id: str
    score: float
    parts: dict[str, float] = field(default_factory=dict)
    price: int = 0


@dataclass(frozen=True, slots=True)
class Unfit:
    peer_id: str
    reasons: tuple[Reason, ...]
    #: only free resources are short, and its hardware holds the job when idle: it is busy
    #: now, not unfit (a client may wait for it)
    busy: bool = False


#: the reasons that a provider's other jobs cause (they pass)
BUSY_CODES = frozenset({"gpu", "cpu", "mem"})


def could_fit_when_idle(ad: HostAdvert, want) -> bool:
    """Whether ``ad``'s hardware holds ``want`` (Resources) with nothing else running."""
    return (len(ad.hardware.gpus) >= want.gpu_count
            and ad.hardware.cpu_count * 1000 >= want.cpu_milli
            and ad.hardware.mem_mib >= want.mem_mib)


def _any_named(environments: tuple, name: str) -> bool:
    """Whether one of ``environments`` is called ``name``."""
    for e in environments:
        if e.name == name:
            return True
    return False


def unfit(c: Candidate, need: Need) -> tuple[Reason, ...]:
    """Every hard filter ``c`` fails for ``need`` (empty: it fits)."""
    ad, offer = c.advert, need.offer
    want = offer.resources
    out: list[Reason] = []
    if "provider" not in ad.roles:
        out.append(Reason("role", "is not a provider"))
    if c.age_ms > need.max_age_ms:
        out.append(Reason("stale", f"has not advertised for over "
                                   f"{need.max_age_ms / 1000:g} s"))
    if not c.connected:
        out.append(Reason("not_connected", "is not connected"))
    if c.refused:
        out.append(Reason("refused", f"is refused ({c.refused})"))
    if need.allow is not None and c.peer_id not in need.allow:
        out.append(Reason("not_allowed", "is not in the allow-list"))
    if offer.environment and not _any_named(ad.environments, offer.environment):
        out.append(Reason("environment", f"has no {offer.environment}"
                          + (" (needs a GPU and the NVIDIA runtime)"
                             if offer.environment == "docker-gpu" else "")))
    if offer.arch and ad.arch != offer.arch:
        out.append(Reason("arch", f"is {ad.arch}, the task is {offer.arch}"))
    if ad.free.gpu_count < want.gpu_count:
        out.append(Reason("gpu", f"has {ad.free.gpu_count} GPU(s) free < {want.gpu_count}"))
    if ad.free.cpu_milli < want.cpu_milli:
        out.append(Reason("cpu", f"has {ad.free.cpu_milli / 1000:g} CPU free < "
                                 f"{want.cpu_milli / 1000:g}"))
    if ad.free.mem_mib < want.mem_mib:
        out.append(Reason("mem", f"has {ad.free.mem_mib} MiB free < {want.mem_mib} MiB"))
    if ad.price + offer.fee > need.max_price:
        out.append(Reason("price", f"asks {ad.price} + fee {offer.fee} > max "
                                   f"{need.max_price}"))
    return tuple(out)


def rank(candidates: list[Candidate], need: Need, weights: Weights = Weights(),
         salt: bytes = b"") -> tuple[list[Ranked], list[Unfit]]:
    """The fitting candidates best first, and every other one with its reasons. Equal
    scores go to the lower price, then by SHA-256(``salt`` + peer id): a client passes its
    own key as ``salt``, so clients that see the same idle providers do not all pick the
    same one (with no salt: by peer id)."""
    fits: list[Candidate] = []
    unfits: list[Unfit] = []
    for c in candidates:
        reasons = unfit(c, need)
        if reasons:
            busy = ({r.code for r in reasons} <= BUSY_CODES
                    and could_fit_when_idle(c.advert, need.offer.resources))
            unfits.append(Unfit(c.peer_id, reasons, busy))
        else:
            fits.append(c)
    if not fits:
        return [], unfits
    env = need.offer.environment
    prices = [c.advert.price for c in fits]
    lo, hi = min(prices), max(prices)
    bench: dict[str, int] = {}  # each one's score for the environment (0: none)
    for c in fits:
        score = 0
        for e in c.advert.environments:
            if e.name == env:
                score = e.score
                break
        bench[c.peer_id] = score
    best_bench = max(bench.values())
    lat = [c.latency_ms for c in fits if c.latency_ms is not None and c.latency_ms > 0]
    best_lat = min(lat) if lat else None
    w_price, w_bench, w_cached, w_queue, w_lat, w_rep = (
        weights.price, weights.benchmark, weights.cached, weights.queue, weights.latency,
        weights.reputation)
    image = need.offer.image_cid
    ranked = []
    for c in fits:
        ad = c.advert
        lat_ms = c.latency_ms
        price = 1.0 if hi == lo else (hi - ad.price) / (hi - lo)
        benchmark = bench[c.peer_id] / best_bench if best_bench > 0 else 0.0
        cached = 1.0 if image in ad.cached_images else 0.0
        queue = 1.0 / (1 + ad.queue + max(0, c.pending))
        latency = (best_lat / lat_ms if best_lat is not None and lat_ms is not None
                   and lat_ms > 0 else 0.5)
        reputation = min(1.0, max(0.0, c.reputation))
        parts = {"price": price, "benchmark": benchmark, "cached": cached, "queue": queue,
                 "latency": latency, "reputation": reputation}
        # the weighted sum of the parts in PARTS order, added as sum() adds them
        score = sum((w_price * price, w_bench * benchmark, w_cached * cached,
                     w_queue * queue, w_lat * latency, w_rep * reputation))
        ranked.append(Ranked(c.peer_id, round(score, 9), parts, ad.price))
    ranked.sort(key=lambda r: (-r.score, r.price))
    _break_ties(ranked, salt)
    return ranked, unfits


def _break_ties(ranked: list[Ranked], salt: bytes) -> None:
    """Order each run of equal (score, price) in ``ranked`` (sorted by them) by
    SHA-256(``salt`` + peer id), or by peer id with no salt: the order a sort on all three
    gives, with the hash made only where two candidates tie."""
    if len({(r.score, r.price) for r in ranked}) == len(ranked):
        return  # no ties
    by = ((lambda t: hashlib.sha256(salt + t.peer_id.encode()).digest()) if salt
          else (lambda t: t.peer_id))
    at = 0
    for _, run in itertools.groupby(ranked, key=lambda r: (r.score, r.price)):
        group = list(run)
        if len(group) > 1:
            ranked[at:at + len(group)] = sorted(group, key=by)
        at += len(group)


def summary(unfits: list[Unfit], total: int | None = None) -> str:
    """"N hosts: 2 have no GPU, 1 has 96 MiB free < 128 MiB, ..." (each host counted under
    every reason it has; texts that differ only in numbers are counted apart)."""
    total = len(unfits) if total is None else total
    if total == 0:
        return "no provider has advertised yet"
    counts = Counter(r.text for u in unfits for r in u.reasons)
    parts = [f"{n} {_plural(text, n)}" for text, n in counts.most_common()]
    return f"{total} host{'s' if total != 1 else ''}: " + ", ".join(parts)


def _plural(text: str, n: int) -> str:
    """'has 1 GPU free' -> 'have 1 GPU free' and 'is arm64' -> 'are arm64' for n > 1."""
    if n == 1:
        return text
    for one, many in (("has ", "have "), ("is ", "are "), ("asks ", "ask ")):
        if text.startswith(one):
            return many + text[len(one):]
    return text


def choose(ranked: list[Ranked], unfits: list[Unfit], skip, queue_of
           ) -> tuple[str | None, list[str]]:
    """Where a plain job goes: the best-ranked provider not in ``skip``; with none, the
    busy one (it holds the job when idle) with the shortest queue (``queue_of(peer_id)``;
    ties keep the ranking's order), whose provider queues it. Returns (that peer id or
    None: wait for the next advert; the busy peer ids in queue order, looked at only when
    no ranked one is left)."""
    untried = next((r.peer_id for r in ranked if r.peer_id not in skip), None)
    if untried is not None:
        return untried, []
    busy = sorted((u.peer_id for u in unfits if u.busy and u.peer_id not in skip),
                  key=queue_of)
    return (busy[0] if busy else None), busy
