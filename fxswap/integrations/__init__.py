"""Front-ends to optional libraries, each import-guarded: figures (:mod:`.plotting`, the ``[plot]`` extra).
The TensorBoard and W&B loggers are :mod:`fxswap.distillation.callbacks`."""
