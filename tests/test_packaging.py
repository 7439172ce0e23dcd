"""Set-up files stay consistent and truthful: environment.yml mirrors pyproject in conda-forge's
names, the torch pin and how the set-up installs it, one Slurm spelling, `veco2 --version`, and the
README's two commands are the ones CI runs."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower()


# PyPI name -> conda-forge name, where they differ (checked against the conda-forge feedstocks:
# pytorch-cpu/pytorch, psycopg2).  Dashes and underscores are the same name on both sides.
CONDA_NAMES = {"torch": "pytorch", "psycopg2-binary": "psycopg2"}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def test_environment_yml_mirrors_pyproject_with_conda_forge_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
        name = _name(requirement)
        wanted[_canonical(CONDA_NAMES.get(name, name))] = requirement[len(name):].strip()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge", "bioconda"]
    listed = {}
    for dependency in env["dependencies"]:
        if isinstance(dependency, str) and not dependency.startswith(("python=", "pip")):
            spec = dependency.split("::", 1)[-1]  # bioconda::snakemake>=8.20
            name = _name(spec)
            listed[_canonical(name)] = spec[len(name):].strip()
    assert listed == wanted, (f"only in pyproject: {sorted(set(wanted) - set(listed))}; "
                              f"only in environment.yml: {sorted(set(listed) - set(wanted))}")
    assert "torch" not in listed and "psycopg2-binary" not in listed  # PyPI-only names never solve on conda-forge
    assert [d for d in env["dependencies"] if isinstance(d, dict)] == [{"pip": ["-e ."]}]


def test_seqeval_is_a_test_dependency_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "seqeval" not in {_name(r) for r in project["dependencies"]}
    assert "seqeval" in {_name(r) for r in project["optional-dependencies"]["test"]}
    runtime_imports = [p for p in (ROOT / "veco2").rglob("*.py") if re.search(r"^\s*(import|from) seqeval", p.read_text(), re.M)]
    assert runtime_imports == []


def test_torch_pin_and_how_the_setup_installs_it():
    constraints = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", constraints, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH_SPEC ?= torch==2.13.0" in makefile
    # The pin applies only when the set-up installs torch itself: a GPU user's own build
    # (`make setup TORCH_SPEC=`) must not be replaced by the pinned wheel.
    assert "$(if $(TORCH_SPEC),-c constraints.txt)" in makefile
    readme = (ROOT / "README.md").read_text()
    assert "CUDA build" in readme and "5.7 GB" in readme and "TORCH_INDEX" in readme


def test_version_flag_prints_the_package_version():
    import subprocess
    import sys

    import veco2

    out = subprocess.run([sys.executable, "-m", "veco2.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith(f"veco2 {veco2.__version__} (torch ")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "veco2.__version__"}


def test_one_slurm_spelling_everywhere():
    texts = {p: p.read_text() for p in [ROOT / "README.md", ROOT / "Snakefile", *(ROOT / "docs").glob("*.md"),
                                        *(ROOT / "config").glob("*.yaml"), *(ROOT / "profiles").rglob("*.yaml")]}
    for path, text in texts.items():
        assert not re.search(r"--profile\s+profiles/slurm", text), f"{path}: use --workflow-profile profiles/slurm"
    assert "--workflow-profile profiles/slurm" in texts[ROOT / "README.md"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(_name(r) == "snakemake-executor-plugin-slurm" for r in project["project"]["optional-dependencies"]["cluster"])
    assert 'pip install -e ".[cluster]"' in texts[ROOT / "README.md"]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in first_block.splitlines() if line.strip() and not line.startswith("#")]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_a_non_editable_install_reports_from_outside_the_checkout(tmp_path):
    """`pip install .` (not -e): the wheel carries the report template, the task registry and the demo
    data, and `veco2 report` works from a directory that is not the checkout."""
    import subprocess
    import sys
    import zipfile

    import shutil

    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT / "veco2", source / "veco2", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("veco2-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"veco2/report/templates/report.html.j2", "veco2/report/reference_rows.yaml",
            "veco2/xtreme/tasks/xnli.yaml"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)  # the installed copy first; dependencies from this environment
    code = ("import sys, veco2, veco2.cli; assert veco2.__file__.startswith(sys.argv[1]), veco2.__file__; "
            "sys.exit(veco2.cli.main(['report', sys.argv[2], '--out', 'report']))")
    done = subprocess.run([sys.executable, "-c", code, str(site), str(ROOT / "tests" / "data" / "results_tree")],
                          cwd=outside, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "XTREME zero-shot cross-lingual transfer results" in (outside / "report" / "report.html").read_text()
