"""The engine wing: one training loop and what it runs.

``aug`` (all randomness drawn up front, the torch reference ops; Triton kernels in ``rd3fast.kernels``),
``transfer``, ``loader`` (the uint8 set resident on the device), ``models``, ``teacher`` (batched soft
labels), ``students`` (K at once), ``losses``, ``soft_labels`` (the soft-label cache), ``graph`` (the CUDA
graph step), ``checkpoint``, ``experiment`` (load and check everything before training), ``train`` (the
one loop) and ``pretraining`` (teachers trained through it).
"""
