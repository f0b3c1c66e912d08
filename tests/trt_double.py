"""A CPU test double of the part of the TensorRT 10 Python API that lmae-sdk uses.

Names mirror ``tensorrt`` exactly (``Builder``, ``OnnxParser``, ``IBuilderConfig``,
``IOptimizationProfile``, ``Runtime.deserialize_cuda_engine``, ``ICudaEngine``,
``IExecutionContext.set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``,
``nptype``, ``DataType``, ``TensorIOMode`` ...).  A "serialized engine" is a small JSON
header (I/O tensors, the optimization profile, the builder flags) followed by the ONNX
model; the execution context runs that model with ONNX Runtime on the CPU.

Device memory is host memory: :class:`HostMemory` implements
:class:`lmae_sdk.trt_engine.DeviceMemory` with numpy buffers, and the execution context
reads its inputs from, and writes its outputs to, the raw addresses given to
``set_tensor_address``, so the runner's copies, buffer sizes and addresses are exercised
as on a GPU.  The double is stricter than TensorRT where that catches wiring bugs: an
address that is not inside a live allocation, or a buffer smaller than the tensor, fails.

Use: :func:`install` (with pytest's ``monkeypatch``) puts the double in ``sys.modules``
as ``tensorrt`` and makes ``lmae_sdk.trt_engine.device_memory`` hand out host memory.
As a script it runs a console command with the double installed::

    python tests/trt_double.py lmae-export --ckpt tiny.pt --trt ...
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

from trt_double_types import (_FROM_ONNX, _LAYER_OF_OP, BuilderFlag, DataType, IHostMemory,  # noqa: F401 - API
                              LayerType, Logger, MemoryPoolType, TensorIOMode, bool, float16, float32, int8, int32,
                              int64, nptype, uint8)
from trt_host_memory import HostMemory, live_allocations, read_device, write_device  # noqa: F401 - the double's API

__version__ = "10.0.1"  # the double of TensorRT 10
MAGIC = b"TRT-DOUBLE-ENGINE\0"
DEVICE_NAME = HostMemory.device_name_text


# ------------------------------------------------------------------ network and parser
class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class ILayer:
    def __init__(self, name: str, type: LayerType, outputs: list[ITensor]) -> None:  # noqa: A002
        self.name, self.type, self._outputs = name, type, outputs
        self.precision = DataType.FLOAT
        self.output_types: dict[int, DataType] = {}

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    def set_output_type(self, index: int, dtype: DataType) -> None:
        self.output_types[index] = dtype


class INetworkDefinition:
    def __init__(self) -> None:
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._layers: list[ILayer] = []
        self.onnx_bytes: bytes | None = None

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    num_layers = property(lambda self: len(self._layers))

    def get_input(self, i: int) -> ITensor:
        return self._inputs[i]

    def get_output(self, i: int) -> ITensor:
        return self._outputs[i]

    def get_layer(self, i: int) -> ILayer:
        return self._layers[i]


class ParserError:
    def __init__(self, desc: str) -> None:
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return self._desc


def _tensor(vi) -> ITensor:
    t = vi.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return ITensor(vi.name, shape, _FROM_ONNX.get(t.elem_type, DataType.FLOAT))


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network, self.logger, self._errors = network, logger, []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        import onnx

        try:
            proto = onnx.load(model, load_external_data=True)
        except Exception as e:  # noqa: BLE001 - TensorRT reports, it does not raise
            self._errors.append(ParserError(f"cannot read {model}: {e}"))
            return False
        return self._populate(proto)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx

        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as e:  # noqa: BLE001
            self._errors.append(ParserError(f"cannot read the model: {e}"))
            return False
        return self._populate(proto)

    def _populate(self, proto) -> bool:
        import onnx

        foreign = sorted({n.op_type for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
        if foreign:
            self._errors.append(ParserError(f"no importer for ops {foreign}"))
            return False
        inferred = onnx.shape_inference.infer_shapes(proto)
        dtypes = {vi.name: _tensor(vi).dtype for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        net = self.network
        inits = {i.name for i in proto.graph.initializer}
        net._inputs = [_tensor(vi) for vi in proto.graph.input if vi.name not in inits]
        net._outputs = [_tensor(vi) for vi in proto.graph.output]
        net._layers = [ILayer(n.name or f"{n.op_type}_{i}", _LAYER_OF_OP.get(n.op_type, LayerType.ELEMENTWISE),
                              [ITensor(o, (), dtypes.get(o, DataType.FLOAT)) for o in n.output])
                       for i, n in enumerate(proto.graph.node)]
        net.onnx_bytes = proto.SerializeToString()
        return True


# ------------------------------------------------------------------ builder
class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: tuple, opt: tuple, max: tuple) -> None:  # noqa: A002
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, input: str) -> list[tuple[int, ...]]:  # noqa: A002
        return list(self.shapes[input])


class ITimingCache:
    def __init__(self, data: bytes = b"") -> None:
        self.data = bytes(data) or b"trt-double timing cache"

    def serialize(self) -> IHostMemory:
        return IHostMemory(self.data)


class IBuilderConfig:
    def __init__(self) -> None:
        self.pools: dict[MemoryPoolType, int] = {}
        self.flags: set[BuilderFlag] = set()
        self.profiles: list[IOptimizationProfile] = []
        self._cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self.pools.get(pool, 0)

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._cache


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition()

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        """The header + ONNX bytes, or None (with an error logged) where TensorRT fails too."""
        if network.onnx_bytes is None:
            self.logger.log(Logger.ERROR, "the network is empty (no ONNX graph parsed)")
            return None
        profile = config.profiles[0] if config.profiles else None
        inputs = []
        for t in network._inputs:
            dynamic = any(d < 0 for d in t.shape)
            if profile is None or t.name not in profile.shapes:
                if dynamic:
                    self.logger.log(Logger.ERROR, f"input {t.name} {t.shape} is dynamic but no optimization "
                                                  f"profile sets its shape")
                    return None
                lo = opt = hi = t.shape
            else:
                lo, opt, hi = profile.shapes[t.name]
            ok = len(lo) == len(opt) == len(hi) == len(t.shape) and all(
                (d < 0 or a == b == c == d) and 1 <= a <= b <= c for d, a, b, c in zip(t.shape, lo, opt, hi))
            if not ok:
                self.logger.log(Logger.ERROR, f"profile for {t.name} {t.shape}: min {lo} opt {opt} max {hi} invalid")
                return None
            inputs.append({"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name,
                           "profile": [list(lo), list(opt), list(hi)]})
        header = {"version": __version__, "inputs": inputs,
                  "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name}
                              for t in network._outputs],
                  "flags": sorted(f.name for f in config.flags)}
        _session(network.onnx_bytes)  # a graph ONNX Runtime cannot load does not build
        head = json.dumps(header).encode()
        return IHostMemory(MAGIC + struct.pack("<Q", len(head)) + head + network.onnx_bytes)


def _session(onnx_bytes: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------ runtime
class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> "ICudaEngine | None":
        data = bytes(serialized_engine)
        if not data.startswith(MAGIC):
            self.logger.log(Logger.ERROR, "the data is not a serialized engine of this TensorRT")
            return None
        n = struct.unpack("<Q", data[len(MAGIC): len(MAGIC) + 8])[0]
        start = len(MAGIC) + 8
        header = json.loads(data[start: start + n])
        if header.get("version") != __version__:
            self.logger.log(Logger.ERROR, f"engine built by TensorRT {header.get('version')}, this is {__version__}")
            return None
        return ICudaEngine(header, data[start + n:])


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes) -> None:
        self._io = {t["name"]: (TensorIOMode.INPUT, t) for t in header["inputs"]}
        self._io.update({t["name"]: (TensorIOMode.OUTPUT, t) for t in header["outputs"]})
        self._names = list(self._io)
        self.flags = header["flags"]
        self.session = _session(onnx_bytes)

    num_io_tensors = property(lambda self: len(self._names))
    num_optimization_profiles = property(lambda self: 1)

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._io[name][0] if name in self._io else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self._io[name][1]["dtype"]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._io[name][1]["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        mode, t = self._io[name]
        if mode != TensorIOMode.INPUT or profile_index != 0:
            raise ValueError(f"{name}: no profile shape (profile {profile_index})")
        return [tuple(s) for s in t["profile"]]

    def create_execution_context(self) -> "IExecutionContext":
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        e = self.engine
        if e.get_tensor_mode(name) != TensorIOMode.INPUT:
            return False
        shape = tuple(int(d) for d in shape)
        lo, _, hi = e.get_tensor_profile_shape(name, 0)
        if len(shape) != len(lo) or any(not a <= d <= b for d, a, b in zip(shape, lo, hi)):
            return False
        self._shapes[name] = shape
        return True

    def _batch(self) -> int | None:
        ins = [n for n in self.engine._names if self.engine.get_tensor_mode(n) == TensorIOMode.INPUT]
        if any(n not in self._shapes for n in ins):
            return None
        batches = {self._shapes[n][0] for n in ins}
        return batches.pop() if len(batches) == 1 else None

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self._shapes.get(name, self.engine.get_tensor_shape(name))
        shape = self.engine.get_tensor_shape(name)
        b = self._batch()
        return tuple((b if b is not None else -1) if d < 0 else d for d in shape)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self.engine.get_tensor_mode(name) == TensorIOMode.NONE:
            return False
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        e = self.engine
        feed = {}
        for name in e._names:
            if name not in self._addresses:
                raise RuntimeError(f"execute_async_v3: no address set for tensor {name}")
        if self._batch() is None:
            raise RuntimeError("execute_async_v3: input shapes missing or their batch sizes differ")
        for name in e._names:
            if e.get_tensor_mode(name) == TensorIOMode.INPUT:
                shape, dt = self._shapes[name], np.dtype(nptype(e.get_tensor_dtype(name)))
                feed[name] = read_device(self._addresses[name], shape, dt)
        outs = e.session.run(None, feed)
        for o, value in zip(e.session.get_outputs(), outs):
            want = self.get_tensor_shape(o.name)
            value = np.ascontiguousarray(value, dtype=nptype(e.get_tensor_dtype(o.name)))
            if tuple(value.shape) != want:
                raise RuntimeError(f"{o.name}: ran to shape {value.shape}, the context promised {want}")
            write_device(self._addresses[o.name], value)
        return True


def install(monkeypatch) -> None:
    """``tensorrt`` -> this double, device memory -> :class:`HostMemory` (undone by monkeypatch)."""
    import lmae_sdk.trt_engine as trt_engine

    monkeypatch.setitem(sys.modules, "tensorrt", sys.modules[__name__])
    monkeypatch.setattr(trt_engine, "device_memory", lambda fallback=None: HostMemory())


class _Patch:
    """A monkeypatch for a whole process (the script below)."""

    def setitem(self, mapping, key, value) -> None:
        mapping[key] = value

    def setattr(self, obj, name, value) -> None:
        setattr(obj, name, value)


COMMANDS = {"lmae-export": "lmae_sdk.export.cli", "lmae": "lmae_sdk.cli"}

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import trt_double  # the module, not __main__: the classes must be the installed ones

    trt_double.install(_Patch())
    import importlib

    cmd = sys.argv[1]
    importlib.import_module(COMMANDS[cmd]).main(sys.argv[2:], prog_name=cmd)
