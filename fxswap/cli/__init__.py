"""``fxswap`` on the command line: a thin layer over the API.

    fxswap blocks  MODEL                 the residual blocks found
    fxswap cheapen MODEL SPEC|PLAN.json  before/after table + a forward check
    fxswap count   MODEL                 params and MACs per block
    fxswap search  MODEL --budget 400k   BlockSwap: the best mixed-block plan under a budget
    fxswap distill --teacher T --student S --method at --data PATH
    fxswap export  STUDENT.pt OUT.pt2|OUT.onnx   a saved student, exported and checked
    fxswap plot    search.json|history.jsonl     Pareto front or training curves to a PNG

MODEL is ``wrn-40-2``, ``resnet-20`` (CIFAR), a timm name (``resnet26d``) or a
torchvision name (``tv:resnet18``); see :func:`fxswap.models.create_model`.
Modules: :mod:`.main` (parser and exit codes), :mod:`.common` (shared parent
parser, argument types, helpers), one module per command group
(:mod:`.cheapen`, :mod:`.search`, :mod:`.distill`, :mod:`.ship`, :mod:`.plot`). ``--json`` prints
machine-readable results (``blocks``, ``count``, ``cheapen``, ``export``); ``--latency``
adds measured latency (``count``, ``cheapen``); ``--pretrained`` / ``--weights FILE``
load the model's weights.

>>> main(["count", "wrn-10-1"])  # doctest: +ELLIPSIS
block ...
0
"""
from .main import main

__all__ = ["main"]
