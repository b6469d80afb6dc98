"""How weights travel from the trainer to the vLLM worker: the one wire format both sides use
(vllm_backend.py sends, vllm_worker.py receives).

Every tensor travels in the engine's dtype, cast once by the sender (the trainer's fp32 master
becomes bf16 on the way: half the bytes of sending fp32 and casting in the worker). Three routes,
fastest first:

* **Same process** (vLLM's engine core and worker in the trainer's process, as on CPU): the cast
  tensors themselves are the RPC's arguments; nothing is copied but the cast.
* **Shared memory**: vLLM's ``collective_rpc`` carries plain data (msgpack), so the sender casts
  every tensor straight into one POSIX shared-memory block (RAM, not disk: ten times faster than
  bytes through collective_rpc, which copies them through two sockets) and sends only
  (name, dtype, shape, byte offset) per tensor; the worker reads views of the block, no copy.
* **Bytes** where /dev/shm is missing or too small (Docker's 64 MB default): (name, dtype, shape,
  raw bytes) per tensor.

Dtypes travel by name (``"bfloat16"``); ``torch.frombuffer`` reads bf16 bytes directly.
"""

from __future__ import annotations

import mmap
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import shared_memory

import _posixshmem
import torch

TensorBytes = tuple[str, str, tuple[int, ...], bytes]  # name, dtype name, shape, raw bytes
TensorSlot = tuple[str, str, tuple[int, ...], int]  # name, dtype name, shape, byte offset
WIRE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ALIGN = 64
_SHM_HEADROOM = 64 << 20  # leave this much of /dev/shm free


def wire_dtype(dtype: torch.dtype) -> str:
    """The name a dtype travels by; ValueError for one the wire does not carry."""
    for name, d in WIRE_DTYPES.items():
        if d == dtype:
            return name
    raise ValueError(f"weights travel as {sorted(WIRE_DTYPES)}, not {dtype}")


def encode(name: str, t: torch.Tensor, dtype: torch.dtype) -> TensorBytes:
    t = t.detach().to("cpu", dtype).contiguous()
    return name, wire_dtype(dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()


def decode(item: TensorBytes) -> tuple[str, torch.Tensor]:
    name, dtype, shape, raw = item
    return name, torch.frombuffer(bytearray(raw), dtype=WIRE_DTYPES[dtype]).reshape(shape)


def to_shared_memory(
    tensors: dict[str, torch.Tensor], dtype: torch.dtype
) -> tuple[shared_memory.SharedMemory, list[TensorSlot]] | None:
    """One shared-memory block holding `tensors` cast to `dtype` (one pass each), and where each
    sits; None when /dev/shm cannot take it (the caller sends bytes). The caller closes and
    unlinks the block."""
    slots, offset, itemsize = [], 0, torch.empty((), dtype=dtype).element_size()
    for name, t in tensors.items():
        offset = (offset + _ALIGN - 1) // _ALIGN * _ALIGN
        slots.append((name, wire_dtype(dtype), tuple(t.shape), offset))
        offset += t.numel() * itemsize
    try:
        if shutil.disk_usage("/dev/shm").free < offset + _SHM_HEADROOM:
            return None
        block = shared_memory.SharedMemory(create=True, size=max(offset, 1))
    except OSError:
        return None
    try:
        for t, (_, _, shape, off) in zip(tensors.values(), slots):
            view = torch.frombuffer(block.buf, dtype=dtype, count=t.numel(), offset=off).view(shape)
            view.copy_(t.detach())
            del view  # the block cannot close while a tensor still points into it
    except BaseException:
        block.close()
        block.unlink()
        raise
    return block, slots


@contextmanager
def from_shared_memory(block_name: str, slots: list[TensorSlot]) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Views of the tensors in a block made by :func:`to_shared_memory`, valid inside the
    `with` (the sender frees the block right after): use them, do not keep them; the list is
    emptied when the `with` ends.

    The block is mapped with a plain mmap, not multiprocessing.shared_memory: that would
    register it with a resource tracker this process may share with the sender, which owns (and
    unlinks) it. Closing the map raises BufferError if a view outlived the `with`.
    """
    size = max((off + _nbytes(dt, shape) for _, dt, shape, off in slots), default=0)
    if size == 0:
        yield []
        return
    fd = _posixshmem.shm_open("/" + block_name.lstrip("/"), os.O_RDWR, mode=0o600)
    try:
        buf = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    try:
        views = [
            (name, torch.frombuffer(buf, dtype=WIRE_DTYPES[dt], count=_numel(shape), offset=off).view(tuple(shape)))
            for name, dt, shape, off in slots
        ]
        yield views
        views.clear()
    finally:
        buf.close()


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _nbytes(dtype: str, shape) -> int:
    return _numel(shape) * torch.empty((), dtype=WIRE_DTYPES[dtype]).element_size()
