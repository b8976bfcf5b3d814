"""A client's own view of each provider: a score in 0..1 from the outcomes of its jobs there.

Each provider key has two decaying counts, ``good`` and ``bad``. Outcomes add to them
(``WEIGHTS``): a checked output +1 good; a timeout or a provider failing mid-job +1 bad; a
minority answer in a replicated run +3 bad; a provable cheat (a ``bad_output`` proof) +100
bad. Both counts halve every ``half_life_s`` (default 7 days), so old behaviour fades and a
provider can earn trust back. The score is ``(good + 1) / (good + bad + 2)``: 0.5 for a
provider we know nothing of, near 1 after many good jobs, near 0 after a cheat.

Pure: the caller passes the time (seconds) and keeps the table where it wants (``to_json`` /
``from_json``). At most ``capacity`` providers are kept; the least recently updated go
first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

HALF_LIFE_S = 7 * 24 * 3600.0
CAPACITY = 10_000
#: outcome -> (good, bad) added
WEIGHTS: dict[str, tuple[float, float]] = {
    "success": (1.0, 0.0),
    "timeout": (0.0, 1.0),
    "failure": (0.0, 1.0),
    "minority": (0.0, 3.0),
    "cheat": (0.0, 100.0),
}


@dataclass(frozen=True, slots=True)
class Score:
    good: float = 0.0
    bad: float = 0.0
    updated_s: float = 0.0
    jobs: int = 0  # outcomes recorded (not decayed)

    @property
    def value(self) -> float:
        return (self.good + 1.0) / (self.good + self.bad + 2.0)


class Reputation:
    """Scores by provider key (bytes)."""

    def __init__(self, half_life_s: float = HALF_LIFE_S, capacity: int = CAPACITY) -> None:
        if half_life_s <= 0 or capacity < 1:
            raise ValueError("half_life_s must be > 0 and capacity >= 1")
        self.half_life_s = half_life_s
        self.capacity = capacity
        self._scores: OrderedDict[bytes, Score] = OrderedDict()

    def _decayed(self, s: Score, now_s: float) -> Score:
        f = 0.5 ** (max(0.0, now_s - s.updated_s) / self.half_life_s)
        return Score(s.good * f, s.bad * f, max(now_s, s.updated_s), s.jobs)

    def record(self, key: bytes, outcome: str, now_s: float) -> Score:
        """Add one outcome (``WEIGHTS``) for ``key`` at ``now_s``; the new score."""
        if outcome not in WEIGHTS:
            raise ValueError(f"unknown outcome {outcome!r}; one of {sorted(WEIGHTS)}")
        good, bad = WEIGHTS[outcome]
        s = self._decayed(self._scores.get(key, Score(updated_s=now_s)), now_s)
        s = Score(s.good + good, s.bad + bad, s.updated_s, s.jobs + 1)
        self._scores[key] = s
        self._scores.move_to_end(key)
        while len(self._scores) > self.capacity:
            self._scores.popitem(last=False)
        return s

    def score(self, key: bytes, now_s: float) -> Score:
        """``key``'s score decayed to ``now_s`` (an empty one: value 0.5)."""
        s = self._scores.get(key)
        return Score(updated_s=now_s) if s is None else self._decayed(s, now_s)

    def value(self, key: bytes, now_s: float) -> float:
        return self.score(key, now_s).value

    def __len__(self) -> int:
        return len(self._scores)

    def to_json(self) -> dict:
        return {"version": 1, "half_life_s": self.half_life_s,
                "scores": {k.hex(): [s.good, s.bad, s.updated_s, s.jobs]
                           for k, s in self._scores.items()}}

    @classmethod
    def from_json(cls, doc: dict, capacity: int = CAPACITY) -> Reputation:
        """Read what ``to_json`` wrote; ``ValueError`` on anything else."""
        try:
            if doc.get("version") != 1:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            rep = cls(float(doc["half_life_s"]), capacity)
            for k, (good, bad, updated, jobs) in doc["scores"].items():
                key = bytes.fromhex(k)
                if len(key) != 32 or min(good, bad) < 0:
                    raise ValueError(f"bad score for {k!r}")
                rep._scores[key] = Score(float(good), float(bad), float(updated), int(jobs))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a reputation table: {exc}") from None
        while len(rep._scores) > capacity:
            rep._scores.popitem(last=False)
        return rep
