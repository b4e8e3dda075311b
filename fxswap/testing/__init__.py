"""Helpers for users' property tests: random residual nets and specs (:mod:`.strategies`), and checks of a
student's modes and weights (:mod:`.integrity`)."""
from .integrity import dead_parameters, modes_mismatch
from .strategies import (BLOCK_KINDS, BlockGeometry, BottleneckBlock, InvertedBlock, NetSpec, PostActBlock,
                         PreActBlock, ResidualNet, SharedConvBlocks, StageSpec, TransformerBlock, build, divisors,
                         residual_nets, specs)

__all__ = ["StageSpec", "NetSpec", "BlockGeometry", "PreActBlock", "PostActBlock", "BottleneckBlock",
           "InvertedBlock", "TransformerBlock", "SharedConvBlocks", "BLOCK_KINDS", "ResidualNet", "build",
           "residual_nets", "specs", "divisors", "modes_mismatch", "dead_parameters"]
