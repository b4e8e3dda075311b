import json

from fxswap.cli import main


def test_cheapen_prints_tables_and_forward_check(capsys):
    assert main(["cheapen", "wrn-16-2", "G(N/4)"]) == 0
    out = capsys.readouterr().out
    assert "layer3.1" in out and "forward check" in out and "OK" in out


def test_cheapen_accepts_plan_json(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plan": {"layer1.*": "B(2)", "*": "G(2)"}}))
    assert main(["cheapen", "wrn-16-1", str(plan)]) == 0


def test_bad_spec_is_a_clear_error(capsys):
    assert main(["cheapen", "wrn-16-1", "G(0)"]) == 2
    assert "fxswap: error" in capsys.readouterr().err


def test_unknown_model(capsys):
    assert main(["blocks", "no-such-model-xyz"]) == 2
    assert "accepted" in capsys.readouterr().err


def test_count_and_blocks(capsys):
    assert main(["count", "resnet-20"]) == 0
    assert main(["blocks", "tv:resnet18", "--input", "3,64,64"]) == 0
    out = capsys.readouterr().out
    assert "layer4.1" in out


def test_missing_plan_file_says_no_such_file(capsys):
    assert main(["cheapen", "wrn-16-1", "nowhere/plan.json"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "spec" in err


def test_model_comes_before_spec_in_usage(capsys):
    assert main(["cheapen", "--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage.index("model") < usage.index("spec")


def test_cli_package_has_no_import_cycle():
    import ast
    import pathlib

    import fxswap.cli

    root = pathlib.Path(fxswap.cli.__file__).parent
    imports = {}
    for f in root.glob("*.py"):
        tree = ast.parse(f.read_text())
        imports[f.stem] = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
                           and n.module} | {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                                            and n.level == 1 and n.module is None for a in n.names}
    # only main imports the command modules; command modules import only common
    for name, deps in imports.items():
        if name not in ("main", "__init__"):
            assert deps <= {"common"}, (name, deps)
