"""An opt-in caching allocator for Numba's CUDA device arrays.

Every CUDA op returns new device arrays, and Numba's own memory manager gives each one
a ``cuMemAlloc`` and, ten arrays later, a ``cuMemFree`` (which waits for the device).
Measured on an H200 (bench/RESULTS-gpu.md): one ``cuda.device_array`` of 512 KiB costs
92 us with them, against 37 us for the launch of the kernel that fills it, so small ops
and training steps are allocation-bound.  This manager keeps freed blocks in a free
list per size class and hands them out again, as PyTorch's and CuPy's allocators do.

Enable it before the process first touches the GPU, either way:

    NUMBA_CUDA_MEMORY_MANAGER=kernprop.kernels.numba_cuda.pool python train.py
    kernprop.kernels.numba_cuda.pool.install()

It is Numba's External Memory Management plugin interface, so it serves every Numba
device array of the process, not only kernprop's.  Reuse is safe for work queued on the
default stream, where every kernprop kernel and every synchronous copy runs: a block
freed while a kernel still reads it is handed out only to work queued after that
kernel.  Code that queues work on other streams must not rely on this manager.  Cached
blocks are returned to the driver when an allocation fails for lack of memory, and on
a context reset.
"""

from __future__ import annotations

import threading
import weakref

from numba import cuda
from numba.cuda.cudadrv import driver as _driver

# Sizes are rounded up to a multiple of this, so that arrays of nearly the same size
# share blocks while small arrays waste at most this much.
GRANULE = 512


def size_class(size: int) -> int:
    """The block size an allocation of ``size`` bytes gets: a whole number of granules."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return max(GRANULE, -(-size // GRANULE) * GRANULE)


class CachingMemoryManager(_driver.NumbaCUDAMemoryManager):
    """Numba's device memory manager with freed blocks kept for reuse (see the module
    docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.RLock()  # finalizers can run inside memalloc (GC)
        self._free: dict[int, list] = {}  # size class -> device pointers ready for reuse
        self._generation = 0  # bumped by reset: blocks of an older context are not kept
        self.cached_bytes = 0  # bytes held in the free lists

    def memalloc(self, size):
        block = size_class(size)
        with self._lock:
            blocks = self._free.get(block)
            ptr = blocks.pop() if blocks else None
            if ptr is not None:
                self.cached_bytes -= block
        if ptr is None:
            ptr = self._allocate(block)
        manager, generation = weakref.ref(self), self._generation

        def give_back():
            # runs when the last array on the block is gone: back to the free list,
            # never to the driver (cuMemFree would wait for the device)
            owner = manager()
            if owner is None:
                return
            with owner._lock:
                owner.allocations.pop(ptr, None)
                if owner._generation == generation:  # else its context was reset: gone
                    owner._free.setdefault(block, []).append(ptr)
                    owner.cached_bytes += block

        mem = _driver.AutoFreePointer(weakref.proxy(self.context), ptr, size, finalizer=give_back)
        # the strong reference that keeps the block alive until its last owner is gone
        # (Numba's own manager does the same); released by give_back
        self.allocations[ptr] = mem
        return mem.own()

    def _allocate(self, block):
        try:
            return _driver.driver.cuMemAlloc(block)
        except _driver.CudaAPIError as exc:
            if exc.code != _driver.binding.CUresult.CUDA_ERROR_OUT_OF_MEMORY:
                raise
        # out of memory: hand every cached block back to the driver, then try once more
        self.release()
        return self._attempt_allocation(lambda: _driver.driver.cuMemAlloc(block))

    def release(self) -> None:
        """Return every cached block to the driver (after the device has finished with
        them)."""
        with self._lock:
            blocks = [ptr for ptrs in self._free.values() for ptr in ptrs]
            self._free.clear()
            self.cached_bytes = 0
        if blocks:
            cuda.synchronize()
            for ptr in blocks:
                _driver.driver.cuMemFree(ptr)

    def reset(self):
        # the context is going away, and its memory with it
        with self._lock:
            self._generation += 1
            self._free.clear()
            self.cached_bytes = 0
        super().reset()


# Numba's plugin entry point: NUMBA_CUDA_MEMORY_MANAGER=<this module>
_numba_memory_manager = CachingMemoryManager


def install() -> None:
    """Make CachingMemoryManager Numba's device memory manager.  Call it before the
    first CUDA call of the process (a context already created keeps its manager)."""
    cuda.set_memory_manager(CachingMemoryManager)
