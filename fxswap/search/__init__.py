"""BlockSwap's search: per-block cost tables (:mod:`.costs`), Fisher potential (:mod:`.fisher`), and candidate
sets, budgets, sampling and the search itself (:mod:`.plans`)."""
from .costs import CostTable
from .fisher import fisher_potential, sensitivity
from .plans import (PAPER_CANDIDATES, REFERENCE_CANDIDATES, BlockSwapResult, CostModel, blockswap,
                    candidate_specs, parse_budget, sample_plans)

__all__ = ["blockswap", "BlockSwapResult", "CostModel", "CostTable", "parse_budget", "sample_plans",
           "PAPER_CANDIDATES", "REFERENCE_CANDIDATES", "candidate_specs", "fisher_potential", "sensitivity"]
