# Below this many elements an OpenMP region costs more than it saves (a fork/join is
# a few microseconds; 32k elements of elementwise work take about that long).
cdef enum:
    PARALLEL_MIN_WORK = 32768
