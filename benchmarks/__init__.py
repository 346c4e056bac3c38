"""Speed and accuracy measurements, each run from the repository root as a module:

  python -m benchmarks.run_all [--only forward,plain_port,train,pose_train,render,pipeline,numerics]
  python -m benchmarks.gpu_benchmark     # the GPU check, run_all's JSON format
  python -m benchmarks.components        # each part of a full-size stage, timed alone
  python -m benchmarks.representation_lowering      # the expert CNN committee's lowerings
  python -m benchmarks.xla_cpu_options   # XLA:CPU's library fusions per setting
  python -m benchmarks.step_profile      # a training step's time by model part (profiler trace)
  python -m benchmarks.routing           # dense / top-k / greedy routing: cost and NME
  python -m benchmarks.params            # parameters per stage of the full-size models
  python -m benchmarks.pose_from_landmarks   # the head-pose fit's error on rendered faces

Shared helpers live in benchmarks/common.py; plain_port.py is the plain JAX rewrite of the
forward that run_all and the tests compare the package with.
"""
