"""Minimal safetensors reader/writer on numpy memory maps (bf16 included, via ml_dtypes).

Format: u64 little-endian header size N, N bytes of JSON {name: {dtype, shape, data_offsets: [a, b]}},
then the raw little-endian tensor bytes. Reading memory-maps the file, so slicing one tensor reads only
the pages it touches.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_header(path: str) -> tuple[dict, int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (size,) = struct.unpack("<Q", raw)
    if size > os.path.getsize(path):
      raise ValueError(f"{path}: corrupt safetensors header (claims {size} bytes)")
    header = json.loads(f.read(size))
  header.pop("__metadata__", None)
  return header, 8 + size


class SafetensorsFile:
  """Lazily memory-mapped tensors of one .safetensors file."""

  def __init__(self, path: str):
    self.path = path
    self.header, self._data_start = read_header(path)
    self._mmap = None

  def keys(self):
    return self.header.keys()

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.header[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    start, end = info["data_offsets"]
    buf = self._mmap[self._data_start + start : self._data_start + end]
    return buf.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def save_file(
    tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None = None
) -> None:
  header, offset = {}, 0
  arrays = {}
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    if arr.dtype not in _NAMES:
      raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot be written to safetensors")
    header[name] = {
        "dtype": _NAMES[arr.dtype],
        "shape": list(arr.shape),
        "data_offsets": [offset, offset + arr.nbytes],
    }
    arrays[name] = arr
    offset += arr.nbytes
  if metadata:
    header["__metadata__"] = metadata
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * ((-len(blob)) % 8)  # align tensor data to 8 bytes
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name in sorted(arrays):
      f.write(arrays[name].tobytes())
