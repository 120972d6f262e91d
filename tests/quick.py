"""`jit` for tests of small computations: compiled at LLVM's -O0.

Compiling, not running, is what a test of a 16-row batch costs: each loss,
metric and batch shape is a new program, 1.5-2 s each at the default
optimisation level and 0.4-0.5 s at -O0 (docs/performance.md, "The test
suite"). The level changes how XLA's CPU backend generates code for a
program, not what the program computes (neither level allows fast-math
rewrites); the train-step, resume and many-device tests compile at the
default level.
"""

import functools

import jax

OPTIONS = {"xla_backend_optimization_level": 0}

jit = functools.partial(jax.jit, compiler_options=OPTIONS)
