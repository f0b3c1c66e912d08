"""The enums, types and logger of the TensorRT 10 Python API, for the test double
(``tests/trt_double.py`` re-exports them under tensorrt's names)."""
from __future__ import annotations

import enum
import sys

import numpy as np

class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


float32, float16, int8, int32, bool, uint8, int64 = (  # noqa: A001 - as tensorrt names them
    DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32, DataType.BOOL, DataType.UINT8, DataType.INT64)
_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}
_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
              2: DataType.UINT8, 7: DataType.INT64}


def nptype(trt_type: DataType):
    return _NP[trt_type]


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class BuilderFlag(enum.Enum):
    FP16 = 0
    INT8 = 1
    OBEY_PRECISION_CONSTRAINTS = 2
    PREFER_PRECISION_CONSTRAINTS = 3


class LayerType(enum.Enum):
    CONVOLUTION = 0
    MATRIX_MULTIPLY = 1
    ELEMENTWISE = 2
    NORMALIZATION = 3
    CONSTANT = 4
    SHAPE = 5
    GATHER = 6
    UNARY = 7


_LAYER_OF_OP = {"Conv": LayerType.CONVOLUTION, "MatMul": LayerType.MATRIX_MULTIPLY, "Gemm": LayerType.MATRIX_MULTIPLY,
                "LayerNormalization": LayerType.NORMALIZATION, "Constant": LayerType.CONSTANT,
                "Shape": LayerType.SHAPE, "Gather": LayerType.GATHER, "GatherElements": LayerType.GATHER}


class Logger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity

    def __init__(self, min_severity: "Logger.Severity" = Severity.WARNING) -> None:
        self.min_severity = min_severity

    def log(self, severity: "Logger.Severity", msg: str) -> None:
        if severity <= self.min_severity:
            print(f"[TRT-double] [{severity.name[0]}] {msg}", file=sys.stderr)


class IHostMemory(bytes):
    """Serialized data (the buffer protocol, like TensorRT's)."""

    @property
    def nbytes(self) -> int:
        return len(self)
