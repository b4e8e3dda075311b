"""Tracing models into torch.fx graphs that name nodes by module path.

``trace`` is ``torch.fx.symbolic_trace`` with four additions:

* timm's not-traceable modules and functions (``timm.layers.get_notrace_*``)
  are kept as leaves / wrapped calls, so timm models trace out of the box;
* each node gets ``node.meta["qualname"]``: the module path a user recognises
  (``layer2.0.conv1``, ``layer2.0.add`` for the residual add inside
  ``layer2.0``; repeats get ``_1``, ``_2``, as in torchvision's
  ``get_graph_node_names``);
* a module that hands its own weights to a ``torch.fx.wrap``-ped function
  (torchvision Swin's attention) is kept as a leaf: one unit, not bare weights
  (:func:`weight_passing_modules`);
* a failure raises :class:`fxswap.TraceError` naming the module being traced
  and the fix (``leaf_modules=``), instead of a stack trace from deep inside fx.

>>> import torchvision
>>> gm = trace(torchvision.models.resnet18())
>>> [n.meta["qualname"] for n in gm.graph.nodes][5:8]
['layer1.0.conv1', 'layer1.0.bn1', 'layer1.0.relu']
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..errors import TraceError
from .modes import kept_modes
from .prune import live_nodes, prune_disconnected

__all__ = ["trace", "FxswapTracer", "node_scope", "ModeSwitch", "retrace_both_modes", "default_arguments", "callers",
           "weight_passing_modules", "clear_foreign_proxies"]


def _timm_notrace() -> tuple[tuple[type, ...], tuple[Callable, ...]]:
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except Exception:  # timm is optional at import time
        return (), ()
    return tuple(get_notrace_modules()), tuple(get_notrace_functions())


class FxswapTracer(fx.Tracer):
    """An ``fx.Tracer`` that knows timm's leaves and records the module being traced.

    ``leaf_modules``: extra module classes (or instances) to keep as leaves.
    ``leaf_paths``: module paths to keep as leaves (used when rewriting a block
    so that everything outside it stays an opaque call).
    ``trace_paths``: if given, every submodule is a leaf except those whose
    path is in this set (and the standard torch.nn leaves stay leaves).

    >>> from fxswap.models import wrn
    >>> from fxswap.models.wide_resnet import PreActBlock
    >>> graph = FxswapTracer(leaf_modules=[PreActBlock]).trace(wrn(10, 1))
    >>> [n.target for n in graph.nodes if n.op == "call_module"]
    ['conv1', 'layer1.0', 'layer2.0', 'layer3.0', 'bn', 'relu', 'pool', 'fc']
    """

    def __init__(
        self,
        leaf_modules: Sequence[type | nn.Module] = (),
        autowrap_functions: Sequence[Callable] = (),
        trace_paths: set[str] | None = None,
    ):
        timm_modules, timm_functions = _timm_notrace()
        super().__init__(
            autowrap_functions=tuple(timm_functions) + tuple(autowrap_functions),
            param_shapes_constant=True,
        )
        self._leaf_types = tuple(m for m in tuple(timm_modules) + tuple(leaf_modules) if isinstance(m, type))
        self._leaf_instances = {id(m) for m in leaf_modules if isinstance(m, nn.Module)}
        self._trace_paths = trace_paths
        self.path_stack: list[tuple[str, type]] = []
        self.failed_at: tuple[str, type] | None = None  # innermost module whose trace raised

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if id(m) in self._leaf_instances:
            return True
        if isinstance(m, self._leaf_types) and not _traces_anyway(m):
            return True
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            # a conv subclass (timm's ScaledStdConv2d standardises its weight, then F.conv2d) is still a conv
            return True
        if self._trace_paths is not None and qualname not in self._trace_paths:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.path_stack.append((self.path_of_module(m), type(m)))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.path_stack[-1]
            raise
        finally:
            self.path_stack.pop()


#: timm modules registered as not traceable that trace correctly in the configuration given (by class name,
#: so timm stays optional): NF-ResNet's block is a leaf only for ``out.mul_(skipinit_gain)``, which fx would
#: drop; without skipinit its residual add is what fxswap needs to see
_TRACEABLE_WHEN = {
    "NormFreeBlock": lambda m: getattr(m, "skipinit_gain", None) is None,
}


def _traces_anyway(m: nn.Module) -> bool:
    check = _TRACEABLE_WHEN.get(type(m).__name__)
    return bool(check and check(m))


def node_scope(node: fx.Node) -> str:
    """Path of the module in whose ``forward`` the node was recorded.

    For a ``call_module`` node this is the *caller* (``layer2.0`` for
    ``layer2.0.conv1``); for any other node it is the module it ran in.

    >>> from fxswap.models import wrn
    >>> nodes = {n.meta["qualname"]: n for n in trace(wrn(10, 1)).graph.nodes}
    >>> node_scope(nodes["layer2.0.conv1"]), node_scope(nodes["layer2.0.add"]), node_scope(nodes["fc"])
    ('layer2.0', 'layer2.0', '')
    """
    # a module called more than once is recorded as "conv@1", "conv@2", ...: the path is the part before "@"
    stack = [key.split("@")[0] for key in node.meta.get("nn_module_stack", {}).keys()]
    if node.op == "call_module" and stack and stack[-1] == node.target:
        stack = stack[:-1]
    return stack[-1] if stack else ""


def _short_op_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target).rsplit(".", 1)[-1]
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        t = node.target
        if t in (operator.add, operator.iadd):
            return "add"
        return getattr(t, "__name__", str(t)).strip("_")
    return node.name


def _assign_qualnames(gm: fx.GraphModule) -> None:
    seen: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            name = node.name
        elif node.op == "call_module":
            name = str(node.target)
        elif node.op == "get_attr":
            name = str(node.target)
        else:
            scope = node_scope(node)
            name = f"{scope}.{_short_op_name(node)}" if scope else _short_op_name(node)
        count = seen.get(name, 0)
        seen[name] = count + 1
        node.meta["qualname"] = name if count == 0 else f"{name}_{count}"


def _describe(module: nn.Module, path: str) -> str:
    return f"'{path or '<root>'}' ({type(module).__name__})"


def trace(
    model: nn.Module,
    leaf_modules: Iterable[type | nn.Module] = (),
    autowrap_functions: Iterable[Callable] = (),
    concrete_args: dict[str, Any] | None = None,
    *,
    _trace_paths: set[str] | None = None,
) -> fx.GraphModule:
    """Trace ``model`` into a ``GraphModule`` whose nodes carry module paths.

    Never mutates ``model``. ``leaf_modules`` are module classes or instances
    to keep as opaque calls (the usual fix for data-dependent control flow);
    ``autowrap_functions`` are functions to record as calls, not trace into.
    Without ``concrete_args``, ``forward`` arguments after the input that
    have a plain default (``mask=None``, ``is_causal=False``) are traced at
    that value, as ``model(x)`` runs (a ``mask`` traced as a tensor would take
    its ``if mask is not None`` branch); ``concrete_args={}`` traces every
    argument.

    >>> from fxswap.models import wrn
    >>> gm = trace(wrn(16, 1))
    >>> "layer2.0.conv1" in [n.meta["qualname"] for n in gm.graph.nodes]
    True
    """
    if not isinstance(model, nn.Module):
        raise TraceError(f"fxswap.trace needs a torch.nn.Module, got {type(model).__name__}")
    _refuse_wrappers(model)
    if concrete_args is None:
        concrete_args = default_arguments(model)
    tracer = FxswapTracer(tuple(leaf_modules), tuple(autowrap_functions), _trace_paths)
    clear_foreign_proxies(model)
    stale = _proxy_attributes(model)  # not dicts: left alone (often written before read), named if the trace fails
    caches = _dict_attributes(model)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
        units = weight_passing_modules(model, graph)
        if units:  # traced again with each one a leaf: one call_module that find_blocks sees as a layer
            _restore(caches)
            tracer = FxswapTracer(tuple(leaf_modules) + units, tuple(autowrap_functions), _trace_paths)
            graph = tracer.trace(model, concrete_args=concrete_args)
    except TraceError:
        raise
    except Exception as exc:  # fx raises many kinds; we add where and how to fix
        if stale:
            raise TraceError(_stale_message(stale, f"{type(exc).__name__}: {exc}")) from exc
        where = tracer.failed_at or ("", type(model))
        path, cls = where
        sub = model.get_submodule(path) if path else model
        raise TraceError(
            f"torch.fx could not trace module {_describe(sub, path)}: {type(exc).__name__}: {exc}\n"
            f"Fix: keep it as an opaque leaf, e.g. fxswap.trace(model, leaf_modules=[{cls.__name__}]) "
            f"(the same leaf_modules= argument works for find_blocks, cheapen and probe); "
            f"functions that branch on tensor values can be passed as autowrap_functions=[...]."
        ) from exc
    finally:
        _restore(caches)
    _refuse_foreign_nodes(graph, stale)
    if concrete_args:
        _keep_argument_names(graph, concrete_args)
    name = type(model).__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    _assign_qualnames(gm)
    return gm


def _is_fx_wrapped(fn) -> bool:
    """Whether ``fn`` was registered with ``torch.fx.wrap`` (fx records a call to it, never traces into it)."""
    try:
        from torch.fx._symbolic_trace import _wrapped_fns_to_patch
    except ImportError:  # a torch without the registry: no module is kept whole for this reason
        return False
    globs, name = getattr(fn, "__globals__", None), getattr(fn, "__name__", None)
    return globs is not None and (id(globs), name) in _wrapped_fns_to_patch


def weight_passing_modules(root: nn.Module, graph: fx.Graph) -> tuple[nn.Module, ...]:
    """Submodules whose ``forward`` hands their own parameters to a ``torch.fx.wrap``-ped function.

    torchvision's Swin attention calls ``shifted_window_attention(x, self.qkv.weight, self.proj.weight, ...)``,
    a function fx records as one call: traced through, the module's layers become bare weights feeding an
    opaque op, with no layer fxswap can recognise. Kept as a leaf, the module is one ``call_module`` unit,
    which :func:`fxswap.find_blocks` counts as its branch's layer (so ``I`` can remove the branch). The model
    itself is never one (its whole forward would be opaque).

    >>> from torchvision.models.swin_transformer import ShiftedWindowAttention
    >>> net = nn.Sequential(nn.Linear(8, 8), ShiftedWindowAttention(8, [2, 2], [0, 0], num_heads=2))
    >>> [type(m).__name__ for m in weight_passing_modules(net, fx.symbolic_trace(net).graph)]
    ['ShiftedWindowAttention']

    (A doctest must not ``torch.fx.wrap`` a function of its own: fx keeps the doctest's globals in a
    process-wide table, and once doctest clears them every later trace fails with a ``KeyError``.)
    """
    found: dict[str, nn.Module] = {}
    for node in graph.nodes:
        if node.op != "call_function" or not _is_fx_wrapped(node.target):
            continue
        scope = node_scope(node)
        own = [a for a in node.all_input_nodes if a.op == "get_attr" and str(a.target).startswith(scope + ".")]
        if scope and own and scope not in found:
            found[scope] = root.get_submodule(scope)
    # an inner unit inside an outer one is hidden by the outer leaf anyway
    return tuple(m for path, m in found.items()
                 if not any(path.startswith(other + ".") for other in found if other != path))


def _keep_argument_names(graph: fx.Graph, concrete_args: dict) -> None:
    """fx renames a frozen argument (``mask`` -> ``mask_1``); name it as ``forward`` does, so that callers
    passing ``mask=None`` by keyword still can."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    taken = {str(n.target) for n in placeholders}
    for n in placeholders:
        base = str(n.target).rsplit("_", 1)[0]
        if str(n.target) not in concrete_args and base in concrete_args and base not in taken:
            taken.add(base)
            n.target = base


def default_arguments(module: nn.Module) -> dict[str, Any] | None:
    """The ``forward`` arguments of ``module`` after its input that have a plain default (``None``, a bool,
    number or string): :func:`trace` traces them at that value, as ``module(x)`` runs.

    >>> class Net(nn.Module):
    ...     def forward(self, x, mask=None, causal=False, scale=1.0):
    ...         return x if mask is None else x * mask
    >>> default_arguments(Net())
    {'mask': None, 'causal': False, 'scale': 1.0}
    """
    import inspect

    try:
        params = list(inspect.signature(module.forward).parameters.values())[1:]  # the first is the input
    except (TypeError, ValueError):
        return None
    frozen = {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
              and (p.default is None or isinstance(p.default, (bool, int, float, str)))}
    return frozen or None


def _refuse_wrappers(model: nn.Module) -> None:
    """DataParallel / DistributedDataParallel and ``torch.compile`` wrap the model: ask for the model itself."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise TraceError(f"{type(model).__name__} wraps the model: pass the model itself, `model.module`, to fxswap "
                         f"(and wrap the student afterwards)")
    if hasattr(model, "_orig_mod") and isinstance(getattr(model, "_orig_mod"), nn.Module):
        raise TraceError("this is a torch.compile wrapper: pass the original model, `model._orig_mod`, to fxswap "
                         "(and compile the student afterwards)")


def _dict_attributes(model: nn.Module) -> list[tuple[dict, dict]]:
    """Plain dict attributes of every submodule (timm's ``attention_bias_cache``), with a copy of each.

    Some modules cache tensors in a dict during forward; during tracing they would
    cache fx proxies, which a later trace would then use as nodes of another graph.
    """
    out = []
    for m in model.modules():
        for key, value in vars(m).items():
            if type(value) is dict and not key.startswith("_"):
                out.append((value, dict(value)))
    return out


def _holds_proxy(value) -> bool:
    return isinstance(value, fx.Proxy) or (type(value) in (tuple, list) and any(isinstance(v, fx.Proxy) for v in value))


def clear_foreign_proxies(model: nn.Module) -> list[str]:
    """Remove the fx proxies that an earlier trace left in ``model``'s dict caches; return where they were.

    A module that memoises tensors in a plain dict during eval forwards (timm LeViT's
    ``attention_bias_cache``) stores a ``torch.fx.Proxy`` there when the user traces it with plain
    ``torch.fx.symbolic_trace``: the model then fails in its own eval forward, and the next trace reads a node
    of another graph (``KeyError: getitem_7``). :func:`trace` restores dicts after its own traces; entries that
    hold a proxy are removed here, with a warning naming them, because a proxy is never a valid value outside
    its trace: a cache recomputes the entry, and any other dict fails on the missing key as it failed on the
    proxy. Nothing else is touched.

    >>> import warnings
    >>> class Cached(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.cache = {}
    ...     def forward(self, x):
    ...         if "k" not in self.cache:
    ...             self.cache["k"] = x.sum()
    ...         return x * self.cache["k"]
    >>> m = Cached().eval()
    >>> _ = fx.symbolic_trace(m)                        # the user's own trace leaves a proxy behind
    >>> type(m.cache["k"]).__name__
    'Proxy'
    >>> with warnings.catch_warnings(record=True):
    ...     warnings.simplefilter("always")
    ...     clear_foreign_proxies(m), m.cache
    (['cache'], {})
    """
    import warnings

    cleared = []
    for path, module in model.named_modules():
        for key, value in vars(module).items():
            if type(value) is not dict:
                continue
            stale = [k for k, v in value.items() if _holds_proxy(v)]
            for k in stale:
                del value[k]
            if stale:
                cleared.append(f"{path}.{key}" if path else key)
    if cleared:
        shown = ", ".join(cleared[:4]) + (f" and {len(cleared) - 4} more" if len(cleared) > 4 else "")
        warnings.warn(f"fxswap: removed torch.fx proxies that an earlier trace of this model (torch.fx.symbolic_trace?) "
                      f"left in {len(cleared)} dict attribute(s): {shown}. They memoise tensors and refill on the "
                      f"next forward; without this, the model's own eval forward fails on them.", stacklevel=3)
    return cleared


def _proxy_attributes(model: nn.Module) -> list[str]:
    return [f"{path}.{key}" if path else key for path, module in model.named_modules()
            for key, value in vars(module).items() if _holds_proxy(value)]


def _stale_message(stale: list[str], what: str) -> str:
    shown = ", ".join(stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
    return (f"the model holds torch.fx proxies from an earlier trace (the user's torch.fx.symbolic_trace?) in "
            f"{shown}, and tracing read one ({what}). Fix: rebuild the model, or reset those attributes to what "
            f"the model's __init__ sets, before calling fxswap.")


def _refuse_foreign_nodes(graph: fx.Graph, stale: list[str]) -> None:
    """A proxy left by another trace in an attribute that is not a dict makes nodes of that graph arguments of
    this one; fx would fail later with ``KeyError: <node name>``: say what happened instead."""
    for node in graph.nodes:
        for arg in node.all_input_nodes:
            if arg.graph is not graph:
                where = f"node {arg.name!r} of another graph, read in module '{node_scope(node) or '<root>'}'"
                raise TraceError(_stale_message(stale or ["an attribute"], where))


def _restore(caches: list[tuple[dict, dict]]) -> None:
    for live, saved in caches:
        live.clear()
        live.update(saved)


class ModeSwitch(nn.Module):
    """Runs one graph in training mode and another in eval mode.

    torch.fx freezes ``self.training`` at trace time (``F.dropout(x,
    training=self.training)``, ``if self.training:``). A rewritten module keeps
    the user's train/eval behaviour by tracing both modes; when the two graphs
    differ, this module holds both. Both graphs call the *same* submodule
    objects, registered here under their own names, so parameters exist once
    and state-dict keys are those of the module that was rewritten.

    >>> import torch
    >>> class Net(torch.nn.Module):
    ...     def forward(self, x):
    ...         return x * 2 if self.training else x
    >>> m = retrace_both_modes(Net(), lambda gm: None)
    >>> isinstance(m, ModeSwitch), m.train()(torch.ones(1)), m.eval()(torch.ones(1))
    (True, tensor([2.]), tensor([1.]))
    """

    def __init__(self, train_graph: fx.GraphModule, eval_graph: fx.GraphModule):
        super().__init__()
        for gm in (eval_graph, train_graph):
            for name, child in gm.named_children():
                self.add_module(name, child)
            for name, p in gm.named_parameters(recurse=False):
                self.register_parameter(name, p)
            for name, b in gm.named_buffers(recurse=False):
                self.register_buffer(name, b)
        self.__dict__["_graphs"] = (train_graph, eval_graph)

    def forward(self, *args, **kwargs):
        train_graph, eval_graph = self.__dict__["_graphs"]
        return (train_graph if self.training else eval_graph)(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # Root-level tensors may have been replaced: point both graphs at ours.
        for gm in self.__dict__["_graphs"]:
            for name, _ in list(gm.named_parameters(recurse=False)):
                setattr(gm, name, getattr(self, name))
            for name, _ in list(gm.named_buffers(recurse=False)):
                gm._buffers[name] = getattr(self, name)
        return self


def unpassed_defaults(root: nn.Module, path: str, leaf_modules: Sequence = (),
                      caller: str | None = None) -> dict[str, Any] | None:
    """Defaulted ``forward`` arguments that the parent never passes to submodule ``path``.

    fx traces ``if shortcut is None:`` with a proxy, so a retraced module would
    bake in the branch for a passed argument; freezing the arguments the
    parent leaves at their default (as ``concrete_args``) keeps the one it runs.
    ``caller`` is the path of the module whose forward calls ``path`` (see
    :func:`callers`; a model that loops over an ``nn.Sequential`` calls its
    blocks itself); by default the nearest ancestor that is not a container.
    """
    import inspect

    module = root.get_submodule(path) if path else root
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    defaulted = [p for p in params if p.default is not inspect.Parameter.empty
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not defaulted or not path:
        return None
    parent_path = caller if caller is not None else path.rpartition(".")[0]
    parent = root.get_submodule(parent_path) if parent_path else root
    while caller is None and isinstance(parent, (nn.ModuleList, nn.ModuleDict)) and parent_path:  # no forward
        parent_path = parent_path.rpartition(".")[0]
        parent = root.get_submodule(parent_path) if parent_path else root
    try:
        graph = trace(parent, leaf_modules, _trace_paths=set()).graph  # every child a leaf: we only read calls
    except TraceError:
        return None
    calls = [n for n in graph.nodes if n.op == "call_module" and
             (f"{parent_path}.{n.target}" if parent_path else n.target) == path]
    if len(calls) != 1:
        return None
    given = dict(zip((p.name for p in params), calls[0].args)) | dict(calls[0].kwargs)
    # an argument the parent leaves out, or passes as a literal None, is that value in every call
    return {p.name: p.default if p.name not in given else None for p in defaulted
            if p.name not in given or given[p.name] is None} or None


def callers(gm: fx.GraphModule) -> dict[str, str]:
    """For each module that ran in a :func:`trace`, the path of the module whose ``forward`` called it.

    >>> from fxswap.models import wrn
    >>> found = callers(trace(wrn(10, 1)))
    >>> found["layer2.0"], found["layer2"]
    ('layer2', '')
    """
    out: dict[str, str] = {}
    for node in gm.graph.nodes:
        stack = [key.split("@")[0] for key in node.meta.get("nn_module_stack", {}).keys()]
        if node.op == "call_module" and (not stack or stack[-1] != node.target):
            stack.append(str(node.target))
        for outer, inner in zip([""] + stack, stack):
            out.setdefault(inner, outer)
    return out


def retrace_both_modes(
    module: nn.Module,
    edit: Callable[[fx.GraphModule], None],
    leaf_modules: Sequence[type | nn.Module] = (),
    trace_paths: set[str] | None = None,
    concrete_args: dict[str, Any] | None = None,
) -> nn.Module:
    """Trace ``module`` in train and eval mode, apply ``edit`` to each graph.

    Returns one GraphModule when both modes trace to the same code, else a
    :class:`ModeSwitch`. What the edit disconnects from the output is removed
    (:func:`fxswap.tracing.prune.prune_disconnected`). Every module keeps its own ``training`` flag: ``module``
    is restored (each submodule to its own flag, mixed flags included) before
    ``edit`` runs, and the result takes ``module``'s flag without touching the
    flags of the modules it calls.

    >>> import torch
    >>> from fxswap.models import wrn
    >>> def relu6(gm):  # an edit: every ReLU module call becomes F.relu6
    ...     for n in gm.graph.nodes:
    ...         if n.op == "call_module" and isinstance(gm.get_submodule(n.target), torch.nn.ReLU):
    ...             n.op, n.target = "call_function", torch.nn.functional.relu6
    >>> m = retrace_both_modes(wrn(10, 1), relu6)
    >>> isinstance(m, fx.GraphModule), "relu6" in m.code, m.training
    (True, True, True)
    """
    was_training = module.training
    graphs = []
    for mode in (True, False):
        with kept_modes(module):  # trace in one mode; the edit then sees every module's own flag again
            module.train(mode)
            gm = trace(module, leaf_modules, concrete_args=concrete_args, _trace_paths=trace_paths)
        live = live_nodes(gm.graph)
        edit(gm)
        prune_disconnected(gm, live)  # what the edit cut off goes: no dead weights in the state dict
        _keep_flags(gm, module, was_training)
        graphs.append(gm)
    train_gm, eval_gm = graphs
    if train_gm.code == eval_gm.code:
        return train_gm
    switch = ModeSwitch(train_gm, eval_gm)
    switch.training = was_training
    return switch


def _keep_flags(gm: fx.GraphModule, module: nn.Module, training: bool) -> None:
    """The retraced ``gm`` stands for ``module``: it takes ``module``'s flag, and the plain ``nn.Module``
    that fx creates for each intermediate path (``conv2`` of a copied ``conv2.conv``) the flag of the module
    it stands for. Not ``gm.train(training)``: that would overwrite the flag of every module it calls
    (a BatchNorm frozen in eval inside a training block stays in eval)."""
    gm.training = training
    for path, sub in gm.named_modules():
        if path and type(sub) is nn.Module:
            original = _submodule_or_none(module, path)
            if original is not None:
                sub.training = original.training


def _submodule_or_none(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None
