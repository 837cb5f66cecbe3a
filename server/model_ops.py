"""Explicit model loads and unloads shared by the workers of one server.

The repository API reaches one worker; that worker applies the change and appends it to an
operations log in the state directory. Every worker replays operations it has not applied
yet on its periodic tick, so all workers converge on the same set of loaded models."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ModelOp:
    seq: int
    op: str  # "load" | "unload"
    model: str
    worker: int


class ModelOpsLog:
    def __init__(self, path: Path, worker: int) -> None:
        self.path = path
        self.worker = worker
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        self.applied = self._last_seq()  # a new worker starts from the repository, not the log

    def _read(self) -> list[ModelOp]:
        ops = []
        with self.path.open("r", encoding="utf-8") as f:
            for line in f:
                try:
                    d = json.loads(line)
                    ops.append(ModelOp(int(d["seq"]), str(d["op"]), str(d["model"]), int(d["worker"])))
                except (ValueError, KeyError):
                    continue  # a torn last line from a crash
        return ops

    def _last_seq(self) -> int:
        ops = self._read()
        return ops[-1].seq if ops else 0

    def append(self, op: str, model: str) -> int:
        with self.path.open("a+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.seek(0)
                last = 0
                for line in f:
                    try:
                        last = max(last, int(json.loads(line)["seq"]))
                    except (ValueError, KeyError):
                        continue
                seq = last + 1
                f.write(json.dumps({"seq": seq, "op": op, "model": model, "worker": self.worker}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return seq

    def desired(self) -> dict[str, str]:
        """The last operation on each model: what a (re)starting worker must catch up on."""
        return {o.model: o.op for o in self._read()}

    def pending(self) -> list[ModelOp]:
        """Operations other workers logged since this one last looked."""
        ops = [o for o in self._read() if o.seq > self.applied]
        if ops:
            self.applied = ops[-1].seq
        return [o for o in ops if o.worker != self.worker]
