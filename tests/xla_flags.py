"""The XLA flags of every test process (pytest's own and the processes tests start).

Fake CPU devices, and LLVM's backend optimisation off: the suite's models are tiny, so it
spends its time compiling, not running, and level 0 compiles ~35% faster (measured on
tests/test_device_augment_step.py, a trainer run and four port parities: 93 s → 60 s) with
the same semantics. Programs the suite times or ships (benchmarks, train.py) keep the
default: this only reaches processes started from the tests.
"""


def xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
