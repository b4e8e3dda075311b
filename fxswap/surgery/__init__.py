"""Surgery (mutation): the spec grammar (:mod:`.spec`), the substitute registry and built-in builders
(:mod:`.substitutes`), the rewrite passes and :func:`cheapen` (:mod:`.rewrite`), the record of what it applied
(:mod:`.applied`), submodule addressing (:mod:`.partial`)."""
from .applied import AppliedPlan, applied_plan
from .rewrite import Plan, cheapen, cheapen_part, resolve_plan
from .spec import BlockSpec, parse_spec
from .substitutes import register_substitute

__all__ = ["cheapen", "cheapen_part", "applied_plan", "AppliedPlan", "resolve_plan", "Plan", "BlockSpec", "parse_spec",
           "register_substitute"]
