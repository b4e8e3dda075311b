"""Zoo coverage: does every spec give a cheaper working student, or a clear error, on real models?

Random weights (never pretrained), a small input (64×64 unless the model's
config fixes its size). For each model: trace, ``find_blocks`` (blocks per
host kind), then ``cheapen(model, spec)`` for each spec in ``SPECS`` and one
forward of the student. Each (model, spec) ends in one outcome:

* ``ok``: a student with the teacher's output shape and fewer parameters;
* ``unchanged``: it runs, but the spec changed nothing (every block kept);
* ``error``: a clear :class:`fxswap.FxswapError` (``SpecError``: spec does not
  apply, would be larger, ...);
* ``larger``: a student with more parameters than the teacher (a bug);
* ``crash``: any other exception, a wrong output shape, or a time-out (a bug).

Each ``ok`` student is then checked for what a parameter count cannot see (issue 18), and the row records:

* ``wrong_mode``: how many of the student's modules have a training flag other than the teacher's (the
  teacher is in eval mode; a module new in the student is compared with its nearest teacher ancestor),
  ``wrong_mode_names`` the first few;
* ``dead_params``: how many of the student's parameters no forward reaches (no gradient after one
  backward of the output's sum, both models in eval mode), not counting those the teacher already leaves
  unreached; ``dead_names`` the first few;
* ``roundtrip``: ``"ok"`` if ``fxswap.save_student(student, ..., model=NAME, plan=SPEC)`` then
  ``fxswap.load_student`` gives identical outputs (both in eval mode), else the error or the difference.

``--all`` tries one model per timm family (``timm.list_modules()``; the
smallest-sounding name in it) and every torchvision classification model;
each model runs in its own process with a time-out, and results are appended
to a JSON-lines file so an interrupted sweep resumes where it stopped::

    nice python benchmarks/zoo_coverage.py --all --results docs/zoo_results.jsonl --timeout 300
    python benchmarks/zoo_coverage.py --report docs/zoo_results.jsonl   # the Markdown tables of docs/zoo.md
    python benchmarks/zoo_coverage.py --report sweep.jsonl rerun.jsonl --merge-into docs/zoo_results.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from collections import Counter, defaultdict

# measure the fxswap of the checkout this script is in (not whichever fxswap is installed)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SPECS = ["G(N/4)", "B(2)", "BG(2,M/8)", "S-2x2", "I"]

TORCHVISION = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf", "regnet_y_400mf",
    "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s", "convnext_tiny",
    "shufflenet_v2_x0_5", "mnasnet0_5", "densenet121", "googlenet", "vgg11", "squeezenet1_0",
]
TIMM = [
    "resnet10t", "resnet18", "resnet26d", "resnet26t", "seresnext26d_32x4d", "ecaresnet26t", "skresnet18",
    "regnetx_002", "regnety_002", "mobilenetv3_small_050", "mobilenetv2_050", "efficientnet_b0",
    "convnext_atto", "resnetrs50", "res2net50_14w_8s", "resnest14d", "dla34", "cspresnet50", "ghostnet_050",
    "dpn48b", "rexnet_100", "lcnet_050", "hrnet_w18_small", "tinynet_e", "repvgg_a0", "mixnet_s",
]

# smaller-sounding names first when picking one model per timm family
_SIZE_WORDS = ["atto", "femto", "pico", "nano", "zepto", "xxs", "xs", "tiny", "mini", "micro", "small", "_t", "_s",
               "s0", "b0", "_0", "18", "26", "050", "100", "base"]


def _meta_params(name: str) -> int | None:
    """Parameter count of a timm model built on the meta device (no memory, no init cost), None if it fails."""
    import timm
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is ranked by its name instead
        return None


def timm_families() -> list[str]:
    """One model per timm module: the smallest by parameter count (built on the meta device), ``test_*``
    models excluded; where none builds on meta, the name with the smallest-sounding size word."""
    import timm

    def rank(name: str):
        at = next((i for i, w in enumerate(_SIZE_WORDS) if w in name), len(_SIZE_WORDS))
        return at, len(name), name

    picks = []
    for module in sorted(timm.list_modules()):
        names = [n for n in timm.list_models(module=module) if not n.startswith("test_")]
        if not names:
            continue
        sizes = {n: _meta_params(n) for n in names}
        sized = {n: s for n, s in sizes.items() if s}
        picks.append(min(sized, key=lambda n: (sized[n], rank(n))) if sized else min(names, key=rank))
    return picks


def torchvision_classifiers() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def make(source: str, name: str):
    if source == "torchvision":
        import torchvision

        kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        return torchvision.models.get_model(name, weights=None, **kwargs)
    import timm

    return timm.create_model(name, pretrained=False)


def _inputs(model, source: str):
    import torch

    cfg = getattr(model, "pretrained_cfg", None) or {}
    c, h, w = cfg.get("input_size", (3, 224, 224))
    if source == "torchvision" and hasattr(model, "transform_input"):
        h = w = max(h, 299) if "inception" in type(model).__name__.lower() else h
    full = torch.randn(1, c, h, w)
    if cfg.get("fixed_input_size"):
        return [full]
    return [torch.randn(1, c, 64, 64), torch.randn(1, c, 96, 96), full]


def _commit() -> str:
    """The fxswap commit a row was measured with (a sweep is resumed across fixes)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        return ""


def _short(exc: BaseException) -> str:
    text = str(exc).split("\n")[0]
    return f"{type(exc).__name__}: {text[:160]}"


_SHOWN = 5  # names kept per check in a row (the count is always complete)


def _wrong_modes(teacher, student) -> list[str]:
    """Student modules whose ``training`` flag differs from the teacher's module of the same name (or, for a
    module the rewrite added, from its nearest ancestor that the teacher has)."""
    flags = {name: m.training for name, m in teacher.named_modules()}
    wrong = []
    for name, m in student.named_modules():
        at = name
        while at not in flags:
            at = at.rpartition(".")[0]
        if m.training != flags[at]:
            wrong.append(name or "(root)")
    return wrong


def _unreached(model, x) -> set[str]:
    """Parameters that get no gradient from one eval-mode forward and backward of the output's sum.

    Only for a model this script owns (it leaves ``.grad`` at ``None`` again)."""
    import torch

    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        out.float().sum().backward()
    dead = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    model.zero_grad(set_to_none=True)
    return dead


def _roundtrip(student, source: str, name: str, spec: str, x) -> str:
    """``"ok"`` when the saved and reloaded student gives the same outputs as ``student``, else why not."""
    import tempfile

    import torch

    import fxswap

    registry = "tv" if source == "torchvision" else source
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "student.pt")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fxswap.save_student(student, path, model=f"{registry}:{name}", plan=spec)
                again = fxswap.load_student(path)
        except Exception as exc:  # noqa: BLE001 - the row records what a user would see
            return _short(exc)
    with torch.no_grad():
        want, got = student.eval()(x), again.eval()(x)
    if want.shape != got.shape:
        return f"reloaded output shape {tuple(got.shape)} instead of {tuple(want.shape)}"
    if not torch.equal(want, got):
        return f"reloaded outputs differ: max |diff| {float((want - got).abs().max()):.3g}"
    return "ok"


def integrity(wrong: list[str], student, source: str, name: str, spec: str, x, teacher_dead: set[str]) -> dict:
    """The checks of an ``ok`` student in eval mode; ``wrong``: :func:`_wrong_modes` of it as ``cheapen``
    returned it."""
    out: dict = {"wrong_mode": len(wrong), "wrong_mode_names": wrong[:_SHOWN]}
    try:
        dead = sorted(_unreached(student, x) - teacher_dead)
        out["dead_params"], out["dead_names"] = len(dead), dead[:_SHOWN]
    except Exception as exc:  # noqa: BLE001
        out["dead_params"], out["dead_names"] = None, [f"check failed: {_short(exc)}"]
    out["roundtrip"] = _roundtrip(student, source, name, spec, x)
    return out


def probe(source: str, name: str, specs=SPECS, checks: bool = True) -> dict:
    """Every spec on one model; a dict of outcomes (JSON-serialisable); ``checks``: run :func:`integrity` on
    each ``ok`` student."""
    import torch

    import fxswap

    row: dict = {"model": f"{source}:{name}", "specs": {}, "commit": _commit()}
    t0 = time.time()
    torch.manual_seed(0)
    try:
        model = make(source, name).eval()
    except Exception as exc:  # noqa: BLE001
        row["build"] = _short(exc)
        return row
    row["params"] = sum(p.numel() for p in model.parameters())
    x = want = None
    for cand in _inputs(model, source):
        try:
            with torch.no_grad():
                want = tuple(model(cand).shape)
            x = cand
            break
        except Exception:  # noqa: BLE001
            continue
    if x is None:
        row["build"] = "the model does not run on a small or its default input"
        return row
    row["input"] = list(x.shape)
    try:
        blocks = fxswap.find_blocks(model)
    except fxswap.NoBlocksError as exc:
        row["blocks"] = 0
        row["no_blocks"] = _short(exc)
        return row
    except Exception as exc:  # noqa: BLE001
        row["find_blocks"] = _short(exc)
        row["find_crash"] = not isinstance(exc, fxswap.FxswapError)
        return row
    row["blocks"] = len(blocks)
    row["kinds"] = dict(Counter(b.kind for b in blocks))
    kind_of = {b.name: b.kind for b in blocks}
    teacher_dead = None
    for spec in specs:
        out: dict = {}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                student = fxswap.cheapen(model, spec, example_input=x)
            wrong = _wrong_modes(model, student)  # the modes as cheapen returned them
            student.eval()
            with torch.no_grad():
                got = tuple(student(x).shape)
            n = sum(p.numel() for p in student.parameters())
            out["ratio"] = round(n / row["params"], 4)
            skipped = set()
            for w in caught:
                text = str(w.message)
                if "kept as they are" in text or "changes nothing" in text:
                    skipped |= {b for b in kind_of if b in text}
            out["kept"] = dict(Counter(kind_of[b] for b in skipped))
            if got != want:
                out["outcome"], out["why"] = "crash", f"output shape {got} instead of {want}"
            elif n > row["params"]:
                out["outcome"] = "larger"
            elif n == row["params"]:
                out["outcome"] = "unchanged"
            else:
                out["outcome"] = "ok"
                if checks:
                    if teacher_dead is None:
                        try:
                            teacher_dead = _unreached(model, x)
                        except Exception:  # noqa: BLE001 - the student's own check then says why
                            teacher_dead = set()
                    out.update(integrity(wrong, student, source, name, spec, x, teacher_dead))
        except fxswap.FxswapError as exc:
            out["outcome"], out["why"] = "error", _short(exc)
        except Exception as exc:  # noqa: BLE001
            out["outcome"], out["why"] = "crash", _short(exc)
        row["specs"][spec] = out
    row["time"] = round(time.time() - t0, 1)
    return row


def _done(path: str) -> set[str]:
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {json.loads(line)["model"] for line in f if line.strip()}


def sweep(models: list[tuple[str, str]], results: str, timeout: float) -> None:
    """Each model in its own process (a hung or memory-hungry model cannot stop the sweep); resumable."""
    done = _done(results)
    for source, name in models:
        key = f"{source}:{name}"
        if key in done:
            continue
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", key], capture_output=True, text=True,
                                  timeout=timeout)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"model": key, "build": f"exit {proc.returncode}: "
                                                                             f"{proc.stderr.strip()[-200:]}"}
        except subprocess.TimeoutExpired:
            row = {"model": key, "timeout": timeout}
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{key} {time.time() - t0:.0f}s", file=sys.stderr, flush=True)


def merged(paths: list[str]) -> list[dict]:
    """The rows of several results files; a model's row in a later file replaces its row in an earlier one
    (a sweep of one commit, then the models re-run on a later one: each row keeps its ``commit``)."""
    rows: dict[str, dict] = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows[row["model"]] = row
    return list(rows.values())


CHECKS = ["wrong mode", "dead params", "round trip fails"]


def _tally_checks(out: dict, counts: Counter) -> str:
    """Count an ``ok`` outcome's checks into ``counts``; the findings in one line ("" if none or unchecked)."""
    if "roundtrip" not in out:
        counts["unchecked"] += 1  # a row measured before the checks existed
        return ""
    counts["checked"] += 1
    found = []
    if out.get("wrong_mode"):
        counts["wrong mode"] += 1
        found.append(f"{out['wrong_mode']} modules in the wrong mode ({', '.join(out['wrong_mode_names'])}"
                     f"{', ...' if out['wrong_mode'] > len(out['wrong_mode_names']) else ''})")
    if out.get("dead_params") is None or out["dead_params"]:
        counts["dead params"] += 1
        n = "?" if out.get("dead_params") is None else out["dead_params"]
        found.append(f"{n} parameters no forward reaches ({', '.join(out.get('dead_names', []))}"
                     f"{', ...' if n != '?' and n > len(out.get('dead_names', [])) else ''})")
    if out["roundtrip"] != "ok":
        counts["round trip fails"] += 1
        found.append(f"save/load: {out['roundtrip']}")
    return "; ".join(found)


def _checks_table(per_spec: dict, checked: dict, findings: list[str]) -> list[str]:
    """The Markdown of the ``ok`` students' checks: per spec, how many were checked and how many fail each."""
    lines = ["", "Checks of the `ok` students: how many were checked, and how many show each problem:", "",
             "| spec | ok | checked | " + " | ".join(CHECKS) + " |", "|---|---|---|" + "---|" * len(CHECKS)]
    total = Counter()
    for spec in SPECS:
        c = checked[spec]
        total.update(c)
        lines.append(f"| {spec} | {per_spec[spec]['ok']} | {c['checked']} | "
                     + " | ".join(str(c[k]) for k in CHECKS) + " |")
    ok = sum(per_spec[s]["ok"] for s in SPECS)
    lines.append(f"| **all** | **{ok}** | **{total['checked']}** | "
                 + " | ".join(f"**{total[k]}**" for k in CHECKS) + " |")
    lines += ["", f"Check findings ({len(findings)}):", ""] + [f"* {f}" for f in findings]
    return lines


def report(results: str | list[str]) -> str:
    """Markdown: totals per outcome, per spec and per host kind, and the list of problems."""
    rows = merged([results] if isinstance(results, str) else results)
    per_spec: dict[str, Counter] = defaultdict(Counter)
    per_source: dict[str, Counter] = defaultdict(Counter)
    kinds_blocks, kinds_models, kinds_kept = Counter(), Counter(), defaultdict(Counter)
    models = Counter()
    problems, unsupported, reasons = [], [], {}
    checked: dict[str, Counter] = defaultdict(Counter)
    findings = []
    commits = Counter(r.get("commit", "?") for r in rows)
    for r in rows:
        src = r["model"].split(":")[0]
        if "timeout" in r:
            models["timed out"] += 1
            problems.append(f"{r['model']}: timed out after {r['timeout']:.0f} s")
            continue
        if "build" in r:
            models["not built / does not run"] += 1
            reasons[r["model"]] = f"not built / does not run: {r['build']}"
            continue
        if r.get("find_blocks"):
            models["find_blocks " + ("crash" if r.get("find_crash") else "error")] += 1
            if r.get("find_crash"):
                problems.append(f"{r['model']}: find_blocks: {r['find_blocks']}")
            reasons[r["model"]] = r["find_blocks"]
            continue
        if not r.get("blocks"):
            models["no residual add (NoBlocksError)"] += 1
            unsupported.append(r["model"])
            continue
        models["with blocks"] += 1
        for kind, n in r.get("kinds", {}).items():
            kinds_blocks[kind] += n
            kinds_models[kind] += 1
        any_ok = False
        for spec, out in r["specs"].items():
            per_spec[spec][out["outcome"]] += 1
            per_source[src][out["outcome"]] += 1
            any_ok |= out["outcome"] == "ok"
            if out["outcome"] in ("ok", "unchanged"):
                n_kinds = r.get("kinds", {})
                for kind, n in n_kinds.items():
                    kept = out.get("kept", {}).get(kind, 0)
                    kinds_kept[kind][spec] += n - kept
            if out["outcome"] == "ok":
                finding = _tally_checks(out, checked[spec])
                if finding:
                    findings.append(f"{r['model']} {spec}: {finding}")
            if out["outcome"] in ("crash", "larger"):
                problems.append(f"{r['model']} {spec}: {out['outcome']}: {out.get('why', out.get('ratio'))}")
        if not any_ok:
            problems.append(f"{r['model']}: no spec gives a cheaper student")
    outcomes = ["ok", "unchanged", "error", "larger", "crash"]
    lines = [f"Models tried: {len(rows)} — " + ", ".join(f"{k}: {v}" for k, v in models.items()), "",
             "Rows per fxswap commit: " + ", ".join(f"{c}: {n}" for c, n in commits.most_common()), ""]
    lines += ["| spec | " + " | ".join(outcomes) + " |", "|---|" + "---|" * len(outcomes)]
    for spec in SPECS:
        lines.append(f"| {spec} | " + " | ".join(str(per_spec[spec][o]) for o in outcomes) + " |")
    total = sum(per_spec.values(), Counter())
    lines.append("| **all** | " + " | ".join(f"**{total[o]}**" for o in outcomes) + " |")
    lines += ["", "| source | " + " | ".join(outcomes) + " |", "|---|" + "---|" * len(outcomes)]
    for src, c in sorted(per_source.items()):
        lines.append(f"| {src} | " + " | ".join(str(c[o]) for o in outcomes) + " |")
    lines += _checks_table(per_spec, checked, findings)
    lines += ["", "Host kinds: blocks found, models with that kind, and blocks rewritten by each spec (in runs "
              "that returned a student):", "",
              "| kind | blocks | models | " + " | ".join(SPECS) + " |", "|---|---|---|" + "---|" * len(SPECS)]
    for kind, n in kinds_blocks.most_common():
        lines.append(f"| {kind} | {n} | {kinds_models[kind]} | " + " | ".join(str(kinds_kept[kind][s]) for s in SPECS)
                     + " |")
    lines += ["", f"No residual add ({len(unsupported)}): " + ", ".join(unsupported), ""]
    if reasons:
        lines += [f"Not analysed ({len(reasons)}):", ""] + [f"* {m}: {why}" for m, why in reasons.items()] + [""]
    lines += [f"Problems ({len(problems)}):", ""] + [f"* {p}" for p in problems]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="one model per timm family + every torchvision classifier")
    parser.add_argument("--source", choices=["timm", "torchvision"],
                        help="with --all: only this source (run two sweeps side by side into two files)")
    parser.add_argument("--only", nargs="*", help="models to try, as timm:name or torchvision:name")
    parser.add_argument("--results", default="zoo_results.jsonl", help="JSON-lines results file (appended, resumable)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--report", nargs="+", help="print the Markdown summary of results files (a model's row "
                                                    "in a later file replaces its row in an earlier one)")
    parser.add_argument("--merge-into", help="with --report: also write the merged rows to this JSON-lines file")
    args = parser.parse_args(argv)
    if args.one:
        source, name = args.one.split(":", 1)
        print(json.dumps(probe(source, name)), flush=True)
        return
    if args.report:
        if args.merge_into:
            rows = list(merged(args.report))  # read every file before writing: the target is often one of them
            with open(args.merge_into, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        print(report(args.report))
        return
    if args.all:
        models = ([("timm", m) for m in timm_families()] if args.source != "torchvision" else [])
        models += [("torchvision", m) for m in torchvision_classifiers()] if args.source != "timm" else []
    elif args.only:
        models = [tuple(m.split(":", 1)) for m in args.only]
    else:
        models = [("torchvision", m) for m in TORCHVISION] + [("timm", m) for m in TIMM]
    sweep(models, args.results, args.timeout)
    print(report(args.results))


if __name__ == "__main__":
    main()
