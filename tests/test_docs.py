"""The README and docs/ say what the software does: their links and named configs exist, their cheap commands run,
the serving commands carry the server flags the default export needs, and they describe the software, not how it
was made."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", REPO / "export" / "README.md", *DOCS]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def prose(text: str) -> str:
    """The text without its code blocks (a `[x](y)` inside code is not a link)."""
    return FENCE.sub("", text)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    kept = "".join(c for c in text if c in " -" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set:
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", prose(path.read_text()), re.M)}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_readme_is_short_and_starts_with_what_a_newcomer_needs():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    headings = re.findall(r"^## (.+)$", prose(text), re.M)
    # Install, quickstart, the choice of model and the configurations come before everything else.
    assert headings[:4] == ["Install", "Quickstart", "Which model for which data", "Configurations"], headings


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_resolves(page):
    missing = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            missing.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            missing.append(f"{target} (no heading for #{anchor})")
    assert not missing, f"{rel(page)}: {missing}"


@pytest.mark.parametrize("page", [*PAGES, *sorted((REPO / "configs").glob("*.cfg"))], ids=rel)
def test_every_named_config_exists(page):
    names = set(re.findall(r"(?<![\w<>-])([A-Za-z][\w-]*\.cfg)\b", page.read_text())) - {"flags.cfg"}
    missing = sorted(n for n in names if not (REPO / "configs" / n).exists())
    assert not missing, f"{rel(page)} names {missing}"


PROCESS_WORDS = re.compile(r"stop [0-9]+|this session|the issue|\bissue #?\d+", re.I)
# Paths and files a user of the repository does not have.
FOREIGN_PATHS = re.compile(r"\.\./shared|/work/|anchor_bench|vhrnn\.txt")


def user_facing_files():
    files = [REPO / "README.md", *DOCS, REPO / "export" / "README.md", REPO / "export" / "models.config",
             *sorted((REPO / "configs").glob("*.cfg"))]
    files += sorted((REPO / "tfhier").rglob("*.py")) + sorted((REPO / "export").glob("*.py"))
    files += sorted((REPO / "bench").rglob("*.py")) + [REPO / n for n in ("train.py", "evaluate.py", "sample.py")]
    return files


def test_no_word_about_how_the_project_is_developed():
    hits = [f"{rel(f)}:{n}: {line.strip()}" for f in user_facing_files()
            for n, line in enumerate(f.read_text().splitlines(), 1) if PROCESS_WORDS.search(line)]
    hits += [f"tests/{f.name}: test name {name}" for f in sorted((REPO / "tests").glob("test_*.py"))
             for name in re.findall(r"^def (test_\w+)", f.read_text(), re.M) if PROCESS_WORDS.search(name.replace("_", " "))]
    assert not hits, "\n".join(hits)


def test_docs_and_configs_name_no_paths_users_do_not_have():
    files = [REPO / "README.md", *DOCS, REPO / "export" / "README.md", *sorted((REPO / "configs").glob("*.cfg"))]
    hits = [f"{rel(f)}:{n}: {line.strip()}" for f in files
            for n, line in enumerate(f.read_text().splitlines(), 1) if FOREIGN_PATHS.search(line)]
    assert not hits, "\n".join(hits)
    # Docstrings and help texts cite papers, not files of a folder users do not have.
    code = sorted((REPO / "tfhier").rglob("*.py")) + sorted((REPO / "bench").rglob("*.py"))
    hits = [f"{rel(f)}:{n}" for f in code for n, line in enumerate(f.read_text().splitlines(), 1)
            if re.search(r"shared/papers|vhrnn\.txt|anchor_bench", line)]
    assert not hits, hits


def test_every_tf_serving_command_enables_xla_for_the_default_export():
    """The default export's sample and continue signatures run XLA computations, which TF Serving's model server
    refuses unless started with --xla_cpu_compilation_enabled=true: every server command in the docs says so."""
    commands = []
    for page in [*PAGES, REPO / "export" / "models.config"]:
        text = page.read_text()
        blocks = FENCE.findall(text) if page.suffix == ".md" else [text]
        commands += [(page, b) for b in blocks if re.search(r"-t tensorflow/serving|^\s*#?\s*tensorflow_model_server ", b, re.M)]
    assert len(commands) >= 3, commands
    for page, block in commands:
        assert "--xla_cpu_compilation_enabled=true" in block, f"{rel(page)}:\n{block}"
    assert "--noxla_generation" in (REPO / "docs" / "deployment.md").read_text()


def test_results_open_with_the_summary_and_keep_one_sign_convention():
    text = (REPO / "docs" / "RESULTS.md").read_text()
    assert re.findall(r"^## (.+)$", prose(text), re.M)[0] == "Summary"
    # Log-likelihood bounds throughout: no table of negative bounds (-ELBO, lower is better).
    assert not re.search(r"[−-]ELBO|lower is better", text), "RESULTS.md mixes sign conventions"
    # Each published number is quoted once, with its table.
    for quote in ("≥ −4.74 (SRNN Table 2)", "≈ −6.91", "> −6.21 (STORN Table 1, VOSP)", "> −5.53 (STORN Table 1, VRAE)",
                  "−6.92, VRNN-32", "−5.43, 2,612 parameters (VHRNN Table 1)", "−334,173", "≥ 13,645"):
        assert text.count(quote) == 1, quote
    assert "−6.21" not in text.replace("> −6.21 (STORN Table 1, VOSP)", "")


def test_python_api_block_is_valid_python_and_imports():
    """The block itself runs against a trained run in tests/test_everyday.py; here: it parses and names only
    the API that exists."""
    import tfhier

    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("## Python API"):], re.S).group(1)
    tree = ast.parse(code)
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "tfhier"}
    assert used and all(hasattr(tfhier, name) for name in used), used


def test_the_command_lines_answer_help():
    """`--help` of every command the README walks through, run side by side (each imports TensorFlow)."""
    commands = {"train.py": ["--flagfile", "--run_dir", "--mixed_precision", "--patience", "--strategy"],
                "evaluate.py": ["--iw_samples", "--checkpoint", "--split"],
                "sample.py": ["--num_samples", "--saved_model", "--prime_split"],
                "export/export.py": ["--export_base", "--xla_generation", "--max_steps"]}
    procs = {name: subprocess.Popen([sys.executable, str(REPO / name), "--help"], cwd=REPO, env=ENV,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in commands}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert "Traceback" not in out, out[-3000:]
        for flag in commands[name]:
            assert flag.lstrip("-") in out, f"{name} --help does not mention {flag}:\n{out[:2000]}"


def test_flags_named_in_training_doc_exist():
    """Every `--flag` the training guide's flag table names is a flag of train.py."""
    from absl import flags

    import tfhier.cli.train  # noqa: F401  (defines the flags)

    text = (REPO / "docs" / "training.md").read_text()
    table = text[text.index("## Flags that matter most"):text.index("## Early stopping")]
    named = set(re.findall(r"`--(\w+)", table)) - {"help"}
    unknown = sorted(n for n in named if n not in flags.FLAGS)
    assert named and not unknown, unknown


TINY = ["--dataset=hershey", "--num_lines=16", "--channels=8,8", "--latent_dims=2,2", "--strides=1,2",
        "--bu_dilations=1,2;1", "--td_blocks=1", "--kernel_size=2", "--head_components=2", "--batch_size=4",
        "--seq_len=32", "--eval_every=2", "--eval_batches=1", "--log_every=1", "--checkpoint_every=2",
        "--sample_every=1000", "--num_samples=0", "--train_steps=2", "--verbose=0"]


def test_walk_through_export_and_saved_model_cli_show(tmp_path):
    """The README's train -> export -> `saved_model_cli show` on a tiny run: the export has the three signatures
    the docs describe, with the inputs docs/deployment.md names."""
    def run(*cmd):
        done = subprocess.run(list(cmd), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{cmd}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    run(sys.executable, str(REPO / "train.py"), *TINY, "--run_dir=runs/demo")
    printed = run(sys.executable, str(REPO / "export" / "export.py"), "--run_dir=runs/demo", "--export_base=exports")
    assert "as model 'demo' version 1" in printed, printed
    shown = run(sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir", "exports/demo/1",
                "--all")
    for signature, inputs in {"serving_default": ("x", "lengths", "seed"),
                              "sample": ("num_samples", "num_steps", "seed", "temperature"),
                              "continue": ("prefix", "prefix_lengths", "num_steps", "seed", "temperature")}.items():
        section = shown[shown.index(f"signature_def['{signature}']"):]
        section = section[:section.index("Method name")]
        for name in inputs:
            assert f"inputs['{name}']" in section, (signature, name, section)
    deployment = (REPO / "docs" / "deployment.md").read_text()
    assert all(f"`{s}`" in deployment for s in ("serving_default", "sample", "continue"))
