"""Command-line defaults come from cvae_ray/config.py: the same values, never restated literals."""

from __future__ import annotations

import argparse
import ast
import inspect
from pathlib import Path

import pytest
from jobs_cli import load_job

from cvae_ray import cli, config

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"

#: (file, subcommand or None, option) -> the config value its default must be.
DEFAULTS = {
    ("cvae_ray/cli.py", "fit", "--seed"): config.DEFAULT_SEED,
    ("cvae_ray/cli.py", "sample", "--seed"): config.DEFAULT_SEED,
    ("cvae_ray/cli.py", "demo-data", "--n-samples"): config.DEMO_SAMPLES,
    ("cvae_ray/cli.py", "demo-data", "--n-genes"): config.DEMO_GENES,
    ("cvae_ray/cli.py", "demo-data", "--seed"): config.DEFAULT_SEED,
    ("jobs/generate_cohort.py", None, "--seed"): config.DEFAULT_SEED,
    ("jobs/generate_cohort.py", None, "--mix"): config.COHORT_MIX,
    ("jobs/evaluate.py", None, "--seeds"): config.EVALUATION_SEEDS,
    ("jobs/evaluate.py", None, "--embedding"): config.REPORT_EMBEDDING,
    ("jobs/benchmark.py", None, "--seeds"): config.EVALUATION_SEEDS,
    ("jobs/bench_augment.py", None, "--seeds"): config.EVALUATION_SEEDS,
    ("jobs/bench_unseen.py", None, "--seeds"): config.EVALUATION_SEEDS,
    ("jobs/bench_unseen.py", None, "--min-samples"): config.UNSEEN_MIN_SAMPLES,
    ("jobs/bench_unseen.py", None, "--generators"): ",".join(config.UNSEEN_GENERATORS),
    ("jobs/benchmark.py", None, "--seed"): config.DEFAULT_SEED,
    ("jobs/benchmark.py", None, "--gamma-subset"): config.TrainConfig.val_gamma_genes,
    ("jobs/tune.py", None, "--seed"): config.DEFAULT_SEED,
    ("jobs/demo.py", None, "--num-trials"): config.DEMO_TRIALS,
    ("jobs/demo.py", None, "--cohort-size"): config.DEMO_COHORT_SIZE,
    ("jobs/bench_quality.py", None, "--nan-policy"): config.DataSpec.nan_policy,
    ("jobs/bench_quality.py", None, "--fit-seeds"): [config.DEFAULT_SEED],
    ("jobs/bench_quality.py", None, "--sample-seeds"): list(range(config.EVALUATION_SEEDS)),
}


def _parser(path: str, command: str | None) -> argparse.ArgumentParser:
    parser = cli.build_parser() if path == "cvae_ray/cli.py" else load_job(REPO / path).build_parser()
    if command is None:
        return parser
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


@pytest.mark.parametrize(("path", "command", "option"), list(DEFAULTS))
def test_parser_default_is_the_config_value(path, command, option):
    [action] = [a for a in _parser(path, command)._actions if option in a.option_strings]
    assert action.default == DEFAULTS[path, command, option]


def _literal_defaults(path: Path) -> set[str]:
    """Options of ``add_argument`` calls in ``path`` whose default is written as a literal."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"
                and node.args and isinstance(node.args[0], ast.Constant)):
            for keyword in node.keywords:
                if keyword.arg == "default" and _is_literal(keyword.value):
                    found.add(node.args[0].value)
    return found


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, (ast.List, ast.Tuple)):
        return all(_is_literal(e) for e in node.elts)
    return isinstance(node, ast.Constant) and node.value is not None


@pytest.mark.parametrize("path", sorted({path for path, _, _ in DEFAULTS}))
def test_parsers_do_not_restate_config_defaults(path):
    restated = _literal_defaults(REPO / path) & {o for p, _, o in DEFAULTS if p == path}
    assert not restated, f"{path}: defaults of {sorted(restated)} restate config.py values"


def test_the_functions_behind_the_parsers_share_the_defaults():
    from cvae_ray.apps.synthetic_cohort import prepare_cohort
    from cvae_ray.data.simulate import simulate_cohort
    from cvae_ray.evaluation.benchmark import run_benchmark
    from cvae_ray.evaluation.report import evaluate_bundle
    from cvae_ray.model.bundle import ModelBundle
    from cvae_ray.tools.bench_quality import measure
    from cvae_ray.tools.demo import run_demo

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    assert default(ModelBundle.sample, "seed") == config.DEFAULT_SEED
    assert (default(prepare_cohort, "seed"), default(prepare_cohort, "mix")) == (
        config.DEFAULT_SEED, config.COHORT_MIX)
    assert (default(simulate_cohort, "n_samples"), default(simulate_cohort, "n_genes"),
            default(simulate_cohort, "seed")) == (config.DEMO_SAMPLES, config.DEMO_GENES,
                                                  config.DEFAULT_SEED)
    assert default(evaluate_bundle, "seeds") == default(run_benchmark, "seeds") == (
        config.EVALUATION_SEEDS)
    assert default(evaluate_bundle, "embedding") == config.REPORT_EMBEDDING
    assert (default(run_demo, "num_trials"), default(run_demo, "cohort_size")) == (
        config.DEMO_TRIALS, config.DEMO_COHORT_SIZE)
    assert default(measure, "sample_seeds") == tuple(range(config.EVALUATION_SEEDS))
    assert config.TrainConfig().seed == config.DataSpec(conditions=("c",)).seed == (
        config.DEFAULT_SEED)
