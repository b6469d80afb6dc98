"""How weights travel from the trainer to the vLLM worker process: the one wire format both
sides use (vllm_backend.py sends, vllm_worker.py receives).

vLLM's ``collective_rpc`` carries plain data (msgpack), not tensors. The fast path copies every
tensor into one POSIX shared-memory block (RAM, not disk: ten times faster than bytes through
collective_rpc, which copies them through two sockets) and sends only (name, numpy dtype, shape,
byte offset) per tensor; where /dev/shm is missing or too small (Docker's 64 MB default) the
tensors go as (name, dtype, shape, bytes). bf16 travels as fp32 (numpy has no bfloat16; exact).
"""

from __future__ import annotations

import mmap
import os
import shutil
from multiprocessing import shared_memory

import _posixshmem
import numpy as np
import torch

TensorBytes = tuple[str, str, tuple[int, ...], bytes]  # name, numpy dtype, shape, raw bytes
TensorSlot = tuple[str, str, tuple[int, ...], int]  # name, numpy dtype, shape, byte offset
_ALIGN = 64
_SHM_HEADROOM = 64 << 20  # leave this much of /dev/shm free


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().to("cpu")
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy()


def encode(name: str, t: torch.Tensor) -> TensorBytes:
    arr = _as_numpy(t)
    return name, arr.dtype.str, tuple(arr.shape), arr.tobytes()


def decode(item: TensorBytes) -> tuple[str, torch.Tensor]:
    name, dtype, shape, raw = item
    return name, torch.from_numpy(np.frombuffer(bytearray(raw), dtype=np.dtype(dtype)).reshape(shape))


def to_shared_memory(tensors: dict[str, torch.Tensor]) -> tuple[shared_memory.SharedMemory, list[TensorSlot]] | None:
    """One shared-memory block holding `tensors`, and where each sits; None when /dev/shm
    cannot take it (the caller sends bytes). The caller closes and unlinks the block."""
    arrays, slots, offset = [], [], 0
    for name, t in tensors.items():
        arr = _as_numpy(t)
        offset = (offset + _ALIGN - 1) // _ALIGN * _ALIGN
        slots.append((name, arr.dtype.str, tuple(arr.shape), offset))
        arrays.append(arr)
        offset += arr.nbytes
    try:
        if shutil.disk_usage("/dev/shm").free < offset + _SHM_HEADROOM:
            return None
        block = shared_memory.SharedMemory(create=True, size=max(offset, 1))
    except OSError:
        return None
    try:
        for arr, (_, _, _, off) in zip(arrays, slots):
            view = np.ndarray(arr.shape, dtype=arr.dtype, buffer=block.buf, offset=off)
            view[...] = arr
            del view
    except BaseException:
        block.close()
        block.unlink()
        raise
    return block, slots


def from_shared_memory(block_name: str, slots: list[TensorSlot], dtype: torch.dtype) -> list[tuple[str, torch.Tensor]]:
    """Copies of the tensors in a block made by :func:`to_shared_memory`, cast to `dtype`.

    The block is mapped read-only with a plain mmap, not multiprocessing.shared_memory: that
    would register it with a resource tracker this process may share with the sender, which
    owns (and unlinks) it.
    """
    size = max((off + int(np.prod(shape)) * np.dtype(dt).itemsize for _, dt, shape, off in slots), default=0)
    fd = _posixshmem.shm_open("/" + block_name.lstrip("/"), os.O_RDONLY, mode=0o600)
    try:
        buf = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
    finally:
        os.close(fd)
    weights = []
    try:
        for name, np_dtype, shape, offset in slots:
            arr = np.frombuffer(buf, dtype=np.dtype(np_dtype), count=int(np.prod(shape)), offset=offset)
            # Copy: the reload must own its data, the block is freed right after.
            weights.append((name, torch.from_numpy(arr.reshape(tuple(shape)).copy()).to(dtype)))
            del arr
    finally:
        if buf is not None:
            buf.close()
    return weights
