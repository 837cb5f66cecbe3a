"""One loaded model version: an onnxruntime session, its signature, warm-up and ``run``."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from turnout.model_store.config import complete_config, signature_of
from turnout.model_store.datatypes import BY_CONFIG, BY_V2
from turnout.model_store.errors import LoadError
from turnout.model_store.signature import Signature
from turnout.protos.model_config_pb2 import DataType, ModelConfig, ModelWarmup

log = logging.getLogger("turnout.model_store")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOptions:
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    allow_spinning: bool = False
    default_max_batch_size: int = 32
    strict_config: bool = False
    graph_optimization: str = "all"  # disable | basic | extended | all
    isolation: str = "thread"  # thread: in the server's process | process: a child of its own
    # isolation "process": a run not answered after this long is taken for a hung child, which is
    # killed (the version turns unready until loaded again); a child not ready after this long fails
    process_run_timeout_s: float = 120.0
    process_load_timeout_s: float = 600.0


_OPT_LEVEL = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class Session(Protocol):
    """What serving needs of a loaded version: :class:`ModelSession` in the server's process,
    or :class:`model_store.process_session.ProcessSession` in a child of its own."""

    name: str
    version: str
    version_dir: Path
    sha256: str
    config: ModelConfig
    signature: Signature
    row_ns: float
    remote: bool  # True: run() waits on another process, so never call it on the event loop

    @property
    def healthy(self) -> bool:
        """False once a process-served version's process has died."""
        ...

    @property
    def failure(self) -> str:
        """Why a version that is not healthy cannot serve ("" while it can)."""
        ...

    @property
    def executor(self) -> Executor | None:
        """Where ``run`` must be called from, if not the shared inference pool."""
        ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def warmup(self) -> None: ...

    def close(self) -> None: ...


class ModelSession:
    """Owns one onnxruntime InferenceSession. ``run`` is thread-safe (onnxruntime's is)."""

    remote = False
    healthy = True
    failure = ""
    executor: Executor | None = None

    def __init__(
        self,
        name: str,
        version: str,
        version_dir: Path,
        config: ModelConfig,
        options: SessionOptions,
        *,
        sha256: str,
    ) -> None:
        self.name = name
        self.version = version
        self.path = version_dir / (config.default_model_filename or "model.onnx")
        if not self.path.is_file():
            raise LoadError(f"model '{name}' version {version}: {self.path.name} not found in {version_dir}")
        self.version_dir = version_dir
        self.sha256 = sha256  # model_store.repository.digest of the version's files and config
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = _OPT_LEVEL[options.graph_optimization]
        so.log_severity_level = 3
        if not options.allow_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._sess = ort.InferenceSession(
                str(self.path), sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise LoadError(
                f"model '{name}' version {version}: onnxruntime cannot load {self.path.name}: {exc}"
            ) from exc
        graph_in = [(i.name, i.type, list(i.shape)) for i in self._sess.get_inputs()]
        graph_out = [(o.name, o.type, list(o.shape)) for o in self._sess.get_outputs()]
        self.config = complete_config(
            config,
            graph_in,
            graph_out,
            default_max_batch_size=options.default_max_batch_size,
            strict=options.strict_config,
        )
        self.signature: Signature = signature_of(self.config)
        self._string_inputs = frozenset(s.name for s in self.signature.inputs if s.datatype == "BYTES")
        self._string_outputs = frozenset(s.name for s in self.signature.outputs if s.datatype == "BYTES")
        self._output_names = [s.name for s in self.signature.outputs]
        self._closed = False
        self.row_ns = 0.0  # measured cost of one row (batch-1 warm-up); 0 until measured

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; BYTES tensors go in as bytes and come out as bytes."""
        if self._string_inputs:
            feeds = dict(feeds)
            for name in self._string_inputs:
                if name in feeds:
                    feeds[name] = _to_str(feeds[name])
        results = self._sess.run(self._output_names, feeds)
        out = dict(zip(self._output_names, results, strict=True))
        for name in self._string_outputs:
            out[name] = _to_bytes(out[name])
        return out

    def warmup(self) -> None:
        """Run the config's ``model_warmup`` samples, or synthetic zeros at batch 1, the
        preferred batch sizes and max_batch_size, so the first real request is not slow."""
        feeds: dict[str, np.ndarray]
        if self.config.model_warmup:
            for sample in self.config.model_warmup:
                feeds = self._warmup_feeds(sample)
                for _ in range(max(sample.count, 1)):
                    try:
                        self.run(feeds)
                    except Exception as exc:
                        raise LoadError(
                            f"model '{self.name}' version {self.version}: warm-up '{sample.name}' failed: {exc}"
                        ) from exc
            return
        sig = self.signature
        if sig.batching:
            preferred = (
                s for s in self.config.dynamic_batching.preferred_batch_size if 0 < s <= sig.max_batch_size
            )
            sizes: tuple[int, ...] = tuple(sorted({1, *preferred, sig.max_batch_size}))
        else:
            sizes = (0,)
        for n in sizes:
            feeds = {}
            for spec in sig.inputs:
                dims = [d if d >= 0 else 1 for d in spec.shape]
                shape = ([n] if sig.batching else []) + dims
                feeds[spec.name] = _synthetic(spec.datatype, shape, zero=True)
            try:
                self.run(feeds)
                if n <= 1:
                    t0 = time.thread_time_ns()  # CPU time: waits for the GIL or a core do not count
                    self.run(feeds)
                    self.row_ns = float(time.thread_time_ns() - t0)
            except Exception as exc:  # a graph that cannot run zeros is still loadable; note it
                log.info(
                    "model %s version %s: synthetic warm-up at batch %d skipped: %s",
                    self.name,
                    self.version,
                    n,
                    exc,
                )
                return

    def _warmup_feeds(self, sample: ModelWarmup) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        batch = [max(sample.batch_size, 1)] if self.signature.batching else []
        for name, spec in sample.inputs.items():
            dt = BY_CONFIG[DataType.Name(spec.data_type)]
            shape = batch + [int(d) for d in spec.dims]
            kind = spec.WhichOneof("input_data_type")
            if kind == "input_data_file":
                path = self.version_dir / "warmup" / spec.input_data_file
                try:
                    raw = path.read_bytes()
                except OSError as exc:
                    raise LoadError(
                        f"model '{self.name}': warm-up file {path} cannot be read: {exc}"
                    ) from exc
                one = np.frombuffer(raw, dtype=dt.numpy if dt.v2 != "BYTES" else np.uint8)
                count = int(np.prod(shape)) if shape else 1
                feeds[name] = np.resize(one, count).reshape(shape)
            else:
                feeds[name] = _synthetic(dt.v2, shape, zero=kind != "random_data")
        return feeds

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            del self._sess

    @property
    def closed(self) -> bool:
        return self._closed


def _synthetic(datatype: str, shape: list[int], *, zero: bool) -> np.ndarray:
    if datatype == "BYTES":
        return np.full(shape, b"" if zero else b"warmup", dtype=object)
    dtype = BY_V2[datatype].numpy
    if zero:
        return np.zeros(shape, dtype=dtype)
    rng = np.random.default_rng(0)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, 100, shape).astype(dtype)


def _to_str(arr: np.ndarray) -> np.ndarray:
    flat = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
    return np.array(flat, dtype=object).reshape(arr.shape)


def _to_bytes(arr: np.ndarray) -> np.ndarray:
    flat = [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in arr.reshape(-1)]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(arr.shape)
