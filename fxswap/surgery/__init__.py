"""Surgery (mutation): the spec grammar (:mod:`.spec`), the substitute registry and built-in builders
(:mod:`.substitutes`), the rewrite passes and :func:`cheapen` (:mod:`.rewrite`), submodule addressing
(:mod:`.partial`)."""
from .rewrite import Plan, cheapen, cheapen_part, resolve_plan
from .spec import BlockSpec, parse_spec
from .substitutes import register_substitute

__all__ = ["cheapen", "cheapen_part", "resolve_plan", "Plan", "BlockSpec", "parse_spec", "register_substitute"]
