"""A fake `tensorrt` module for CPU tests of engine/accel/trt_engine.py, and the fake ONNX files it reads.

It also parses real ONNX files: such an "engine" then runs the graph in onnxruntime on the
memory its bound addresses point to (CPU memory: see the fake_cuda fixture), so the path
export -> build -> cache -> load -> bind -> execute runs end to end on a CPU, TensorRT aside."""

from __future__ import annotations

import base64
import ctypes
import json
import threading
import types
from pathlib import Path
from types import SimpleNamespace

# ---- a fake `tensorrt` that records every call: build, load, bind and run on CPU -------------------------
#
# It mirrors the Python API of TensorRT 8.6 / 10.x / 11.x as far as streamvj uses it (checked against
# NVIDIA/TensorRT python/src/infer/pyCore.cpp): pybind base classes that refuse subclasses whose
# __init__ skipped the base one, `parse_from_file` -> bool with `num_errors`/`get_error`,
# `build_serialized_network` -> IHostMemory (a buffer with `nbytes`) or None, `deserialize_cuda_engine`
# -> engine or None, the name-based I/O API, and `execute_async_v3(stream_handle) -> bool`. The
# "ONNX file" is JSON naming the graph's inputs/outputs; the "engine" is that JSON again.

_TRT_DTYPES = ("float32", "float16", "bfloat16", "int32", "int64", "int8", "uint8", "bool")
_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 6: "int32", 7: "int64", 3: "int8", 2: "uint8", 9: "bool"}


def onnx_io(path: Path) -> tuple[list, list, bytes]:
    """A real ONNX file's graph inputs and outputs as [name, shape, dtype name], and the model's bytes."""
    import onnx

    model = onnx.load(str(path))
    weights = {t.name for t in model.graph.initializer}

    def io(values):
        return [[v.name, [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim],
                 _ONNX_DTYPES[v.type.tensor_type.elem_type]] for v in values if v.name not in weights]

    return io(model.graph.input), io(model.graph.output), model.SerializeToString()


def _array_at(address: int, shape, dtype: str):
    """The numpy view of `shape` `dtype` elements at a raw (CPU) address: what a kernel reads and writes."""
    import numpy as np

    np_dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = (ctypes.c_char * (count * np_dtype.itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape)


def make_fake_trt(version: str = "10.9.0.34") -> types.ModuleType:
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []         # (api, args...) in call order
    trt.events = []        # stream order: waits and enqueues
    trt.loggers = []       # the logger every Builder/Runtime got
    trt.build_count = 0
    trt.fail_build = trt.context_none = False
    trt.execute_ok = trt.address_ok = trt.shape_ok = True
    trt.on_execute = None  # what the "kernels" do: a test callback
    trt.on_execute_context = None  # the same, told which execution context runs: callback(context)
    trt.monitor_steps = 3
    for name in _TRT_DTYPES:
        if major >= 10 or name not in ("bfloat16", "int64"):  # TensorRT 8.6 has neither
            setattr(trt, name, f"DataType.{name}")
    trt.TensorIOMode = SimpleNamespace(INPUT="TensorIOMode.INPUT", OUTPUT="TensorIOMode.OUTPUT")
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="MemoryPoolType.WORKSPACE")
    flags = SimpleNamespace()
    if major < 11:
        flags.EXPLICIT_BATCH = 0
    if major >= 9:
        flags.STRONGLY_TYPED = 1
    trt.NetworkDefinitionCreationFlag = flags
    trt.BuilderFlag = SimpleNamespace(FP16="BuilderFlag.FP16") if major < 11 else SimpleNamespace(REFIT="REFIT")

    def needs_base_init(obj, base):
        if not getattr(obj, "_base_init", False):  # what pybind11 raises for such a subclass
            raise TypeError(f"{base}.__init__() must be called when overriding __init__")

    class ILogger:
        Severity = SimpleNamespace(INTERNAL_ERROR="INTERNAL_ERROR", ERROR="ERROR", WARNING="WARNING",
                                   INFO="INFO", VERBOSE="VERBOSE")

        def __init__(self):
            self._base_init = True

    trt.ILogger = ILogger
    if major >= 10:
        class IProgressMonitor:
            def __init__(self):
                self._base_init = True

        trt.IProgressMonitor = IProgressMonitor

    class Tensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, tuple(shape), dtype

    class Network:
        def __init__(self, flags_value):
            self.flags, self.inputs, self.outputs = flags_value, [], []
            self.onnx = None  # a real ONNX model's bytes, run by onnxruntime at execute

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class Parser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            trt.calls.append(("parse_from_file", path))
            assert isinstance(path, str)
            data = Path(path).read_bytes()
            if data.startswith(b"{"):
                spec = json.loads(data)
            else:
                inputs, outputs, self.network.onnx = onnx_io(Path(path))
                spec = {"inputs": inputs, "outputs": outputs}
            if "error" in spec:
                self.errors = [spec["error"], "In node 2: a second problem"]
                return False
            self.network.inputs = [Tensor(n, s, getattr(trt, d)) for n, s, d in spec["inputs"]]
            self.network.outputs = [Tensor(n, s, getattr(trt, d)) for n, s, d in spec["outputs"]]
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    trt.OnnxParser = Parser

    class Config:
        def __init__(self):
            self.flags, self.pools = [], {}
            self.builder_optimization_level = self.progress_monitor = None

        def set_flag(self, flag):
            trt.calls.append(("set_flag", flag))
            self.flags.append(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

    class Builder:
        def __init__(self, logger):
            needs_base_init(logger, "ILogger")
            trt.loggers.append(logger)
            self.logger = logger

        def create_network(self, flags_value=0):
            trt.calls.append(("create_network", flags_value))
            return Network(flags_value)

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            trt.calls.append(("build_serialized_network",))
            trt.build_count += 1
            monitor, cancelled = config.progress_monitor, []
            if monitor is not None:
                needs_base_init(monitor, "IProgressMonitor")

                def report():  # TensorRT calls the monitor from its own threads
                    monitor.phase_start("Building engine", None, trt.monitor_steps)
                    for step in range(trt.monitor_steps):
                        if not monitor.step_complete("Building engine", step):
                            cancelled.append(step)
                            break
                    monitor.phase_finish("Building engine")

                worker = threading.Thread(target=report)
                worker.start()
                worker.join()
            if trt.fail_build or cancelled:
                self.logger.log(ILogger.Severity.ERROR, "[network.cpp] Error Code 4: Internal Error (fake)")
                return None
            self.logger.log(ILogger.Severity.VERBOSE, "a verbose line nobody needs")

            def io(tensors):
                return [[t.name, list(t.shape), t.dtype.removeprefix("DataType.")] for t in tensors]

            engine = {"inputs": io(network.inputs), "outputs": io(network.outputs),
                      "fp16": "BuilderFlag.FP16" in config.flags}
            if network.onnx is not None:
                engine["onnx"] = base64.b64encode(network.onnx).decode()
            return memoryview(json.dumps(engine).encode())  # like IHostMemory: a buffer with nbytes

    trt.Builder = Builder

    class Context:
        def __init__(self, engine):
            self.engine, self.addresses = engine, {}

        def set_input_shape(self, name, shape):
            assert isinstance(shape, (tuple, list))
            trt.calls.append(("set_input_shape", name, tuple(shape)))
            return trt.shape_ok

        def set_tensor_address(self, name, address):
            assert isinstance(address, int)
            trt.calls.append(("set_tensor_address", name, address))
            self.addresses[name] = address
            return trt.address_ok

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int)
            trt.events.append(("execute_async_v3", stream_handle))
            if trt.on_execute is not None:
                trt.on_execute()
            if trt.on_execute_context is not None:
                trt.on_execute_context(self)
            if self.engine.session is not None:
                self._run_onnx()
            return trt.execute_ok

        def _run_onnx(self):
            io = {name: (shape, dtype.removeprefix("DataType.")) for name, shape, dtype, _ in self.engine.io}
            feeds = {n: _array_at(self.addresses[n], *io[n]) for n in self.engine.input_names}
            outs = self.engine.session.run(self.engine.output_names, feeds)
            for name, out in zip(self.engine.output_names, outs):
                _array_at(self.addresses[name], *io[name])[...] = out

    class Engine:
        def __init__(self, spec):
            self.io = [(n, tuple(s), getattr(trt, d), trt.TensorIOMode.INPUT) for n, s, d in spec["inputs"]]
            self.io += [(n, tuple(s), getattr(trt, d), trt.TensorIOMode.OUTPUT) for n, s, d in spec["outputs"]]
            self.input_names = [n for n, _, _ in spec["inputs"]]
            self.output_names = [n for n, _, _ in spec["outputs"]]
            self.session = None
            if "onnx" in spec:
                import onnxruntime

                self.session = onnxruntime.InferenceSession(base64.b64decode(spec["onnx"]),
                                                            providers=["CPUExecutionProvider"])

        @property
        def num_io_tensors(self):
            return len(self.io)

        def _find(self, name):
            return next(t for t in self.io if t[0] == name)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def get_tensor_shape(self, name):
            return self._find(name)[1]

        def get_tensor_dtype(self, name):
            return self._find(name)[2]

        def get_tensor_mode(self, name):
            return self._find(name)[3]

        def create_execution_context(self):
            return None if trt.context_none else Context(self)

    class Runtime:
        def __init__(self, logger):
            needs_base_init(logger, "ILogger")
            trt.loggers.append(logger)

        def deserialize_cuda_engine(self, data):
            trt.calls.append(("deserialize_cuda_engine",))
            try:
                return Engine(json.loads(bytes(memoryview(data))))
            except ValueError:
                return None  # what TensorRT does with a foreign or corrupt plan (and logs an error)

    trt.Runtime = Runtime
    return trt


def write_graph(path: Path, inputs, outputs, **extra) -> Path:
    """A fake ONNX file: [name, shape, TensorRT dtype name] per input/output."""
    path.write_text(json.dumps({"inputs": inputs, "outputs": outputs, **extra}))
    return path
