"""Read a CTranslate2 ``model.bin`` into numpy arrays, without CTranslate2.

The layout (CTranslate2's ``models/model.cc``, binary version 6): a
little-endian ``uint32`` version, the spec name and its revision, the
variable count, then per variable its name, rank, dimensions, data type and
bytes; after the variables, aliases (one name standing for another).
Strings are a ``uint16`` length (with the terminating NUL) and the bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotate.errors import ModelError

#: CTranslate2's DataType enumeration, in order.
_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
}
#: Versions whose layout this reader knows (variables carry a dtype from 4 on).
SUPPORTED_VERSIONS = range(4, 7)


@dataclass(frozen=True)
class Ctranslate2Model:
    """The variables of a CTranslate2 model file.

    Attributes:
        spec: The model spec's name, e.g. ``"WhisperSpec"``.
        revision: The spec's revision.
        variables: Name to array (aliases resolved to the arrays they name).
    """

    spec: str
    revision: int
    variables: dict[str, np.ndarray]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.view = memoryview(data)  # variables are views, not copies
        self.offset = 0

    def unpack(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        length = self.unpack("H")
        raw = self.data[self.offset : self.offset + length]
        self.offset += length
        return raw.rstrip(b"\0").decode("utf-8")

    def take(self, n: int) -> memoryview:
        if self.offset + n > len(self.data):
            raise ModelError(f"truncated CTranslate2 file: {n} bytes wanted at {self.offset}")
        raw = self.view[self.offset : self.offset + n]
        self.offset += n
        return raw


def read_ctranslate2(path: str | Path) -> Ctranslate2Model:
    """Every variable of the CTranslate2 model file at ``path``.

    Raises:
        ModelError: The file is not a CTranslate2 model of a known version, or is truncated.
    """
    return parse_ctranslate2(Path(path).read_bytes(), str(path))


def parse_ctranslate2(data: bytes, path: str = "model.bin") -> Ctranslate2Model:
    """Every variable of a CTranslate2 model file's bytes (arrays are views of ``data``).

    Args:
        data: The whole file.
        path: What to call it in errors.

    Raises:
        ModelError: Not a CTranslate2 model of a known version, or truncated.
    """
    reader = _Reader(data)
    try:
        version = reader.unpack("I")
        if version not in SUPPORTED_VERSIONS:
            raise ModelError(f"{path}: CTranslate2 binary version {version}, "
                             f"expected one of {list(SUPPORTED_VERSIONS)}")
        spec = reader.string()
        revision = reader.unpack("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(reader.unpack("I")):
            name = reader.string()
            rank = reader.unpack("B")
            shape = tuple(reader.unpack("I") for _ in range(rank))
            dtype_code = reader.unpack("B")
            if dtype_code not in _DTYPES:
                raise ModelError(f"{path}: variable {name} has unknown data type {dtype_code}")
            n_bytes = reader.unpack("I")
            dtype = np.dtype(_DTYPES[dtype_code])
            if n_bytes != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
                raise ModelError(f"{path}: variable {name} of shape {shape} has {n_bytes} bytes")
            variables[name] = np.frombuffer(reader.take(n_bytes), dtype=dtype).reshape(shape)
        for _ in range(reader.unpack("I")):
            alias, target = reader.string(), reader.string()
            variables[alias] = variables[target]
    except struct.error as error:
        raise ModelError(f"{path}: truncated CTranslate2 file ({error})") from error
    if reader.offset != len(data):
        raise ModelError(f"{path}: {len(data) - reader.offset} bytes left after the variables")
    return Ctranslate2Model(spec, revision, variables)
