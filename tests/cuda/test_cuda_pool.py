"""The caching allocator of the cuda backend (``kernels/numba_cuda/pool.py``), with the
driver's allocation calls replaced by a fake: no GPU needed.  Checked on a GPU by
``bench/gpu.sh`` (the MLP step and small ops run with it)."""

import gc
import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the simulator has no memory manager", allow_module_level=True)
pytest.importorskip("numba.cuda")

from numba.cuda.cudadrv import driver  # noqa: E402

from kernprop.kernels.numba_cuda import pool  # noqa: E402


class FakeDriver:
    """cuMemAlloc / cuMemFree that hand out integers and can run out of memory."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.used = 0
        self.allocs = 0
        self.frees = 0
        self.next = 0x1000
        self.sizes = {}

    def cuMemAlloc(self, size):
        if self.used + size > self.capacity:
            raise driver.CudaAPIError(driver.binding.CUresult.CUDA_ERROR_OUT_OF_MEMORY, "out of memory")
        self.allocs += 1
        self.used += size
        self.next += size
        self.sizes[self.next] = size
        return self.next

    def cuMemFree(self, ptr):
        self.frees += 1
        self.used -= self.sizes.pop(ptr)


class FakeContext:
    pass


@pytest.fixture
def fake(monkeypatch):
    fake = FakeDriver(capacity=8 * 1024)
    # through the instance dict: getattr on the driver would try to load libcuda
    monkeypatch.setitem(vars(driver.driver), "cuMemAlloc", fake.cuMemAlloc)
    monkeypatch.setitem(vars(driver.driver), "cuMemFree", fake.cuMemFree)
    monkeypatch.setattr(pool.cuda, "synchronize", lambda: None)
    return fake


def test_size_classes():
    assert [pool.size_class(s) for s in (0, 1, 512, 513, 4096)] == [512, 512, 512, 1024, 4096]
    with pytest.raises(ValueError, match="size must be >= 0"):
        pool.size_class(-1)


def test_freed_blocks_are_reused_not_freed(fake):
    context = FakeContext()
    manager = pool.CachingMemoryManager(context=context)
    a = manager.memalloc(1000)
    b = manager.memalloc(1000)
    assert fake.allocs == 2 and a.device_pointer != b.device_pointer
    pointer = a.device_pointer
    del a
    gc.collect()
    assert manager.cached_bytes == 1024 and fake.frees == 0  # kept, not freed
    c = manager.memalloc(900)  # same size class: the cached block
    assert fake.allocs == 2 and c.device_pointer == pointer and manager.cached_bytes == 0
    d = manager.memalloc(3000)  # another size class: a new block
    assert fake.allocs == 3 and d.size == 3000
    del b, c, d


def test_out_of_memory_returns_the_cache_to_the_driver(fake):
    context = FakeContext()
    manager = pool.CachingMemoryManager(context=context)
    blocks = [manager.memalloc(2048) for _ in range(4)]  # the whole fake device
    del blocks
    gc.collect()
    assert manager.cached_bytes == 8192 and fake.used == 8192
    big = manager.memalloc(4096)  # fits only once the cached 2 KiB blocks are released
    assert fake.frees == 4 and manager.cached_bytes == 0 and big.size == 4096
    del big


def test_blocks_of_a_reset_context_are_not_kept(fake):
    manager = pool.CachingMemoryManager(context=FakeContext())
    a = manager.memalloc(100)
    manager.reset()
    del a
    gc.collect()
    assert manager.cached_bytes == 0 and fake.allocs == 1
    b = manager.memalloc(100)  # a fresh block, not the dead one
    assert fake.allocs == 2
    del b
