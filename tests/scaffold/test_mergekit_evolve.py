"""`evomerge convert mergekit-evolve`: a mergekit-evolve config becomes a space and a run config
that evomerge reads as they are, whose genes merge what mergekit-evolve's genome merges.

The fixtures (tests/data/mergekit_evolve/) have the shape of mergekit's docs/evolve.md; their
relative model paths resolve from the working directory, as mergekit-evolve reads them, so each
test runs in a directory holding `models/` (tiny 4-layer Llamas). The gene-meaning test decodes
a random point of the converted space and the same values as mergekit 0.1.5's genotype (its own
`ModelGenome.genotype_merge_config`), merges both and compares the tensors. Bad inputs are in
tests/catalogue/test_convert_inputs.py.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.config.run import RunConfig
from evomerge.scaffold.yaml_writer import Commented, plain, render, write_files
from evomerge.search.space import load_space
from evomerge.testing import make_family

DATA = Path(__file__).resolve().parents[1] / "data" / "mergekit_evolve"
# fixture -> extra options (the docs example names Hub models: their depth is given)
FIXTURES = {
    "docs_example": ["--num-layers", "32"],
    "granularity_filters": [],
    "smooth_one_group": [],
    "negative_weights": [],
    "dare_ties": [],
    "slerp": [],
    "runs_as_is": [],
}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evolve-models")
    make_family(root / "models", tied=False, n_experts=2, layers=4, seed=3)
    return root / "models"


@pytest.fixture
def workdir(tmp_path, monkeypatch, family) -> Path:
    """The working directory mergekit-evolve would run in: `models/` beside the output."""
    (tmp_path / "models").symlink_to(family)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def convert(name: str, out: str | Path = "out", *extra) -> Path:
    res = invoke("convert", "mergekit-evolve", DATA / f"{name}.yml", "--out", out, *FIXTURES[name], *extra)
    assert res.exit_code == 0, res.output
    assert f"{Path(out) / 'space.yaml'} and {Path(out) / 'run.yaml'}" in res.output.replace("\n", "")
    return Path(out)


def comment_above(text: str, key: str) -> str:
    """The comment lines right above the line that sets ``key`` (or starts ``key: value``)."""
    lines = text.splitlines()
    start = key if ":" in key else f"{key}:"
    i = next(i for i, line in enumerate(lines) if re.match(rf"^\s*(- )?{re.escape(start)}", line))
    above = []
    while i > 0 and lines[i - 1].lstrip().startswith("#"):
        i -= 1
        above.insert(0, lines[i].lstrip()[1:].strip())
    return " ".join(above)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_each_fixture_converts_into_files_evomerge_reads_as_they_are(workdir, name):
    out = convert(name)
    assert sorted(p.name for p in out.iterdir()) == ["run.yaml", "space.yaml"]
    local = name != "docs_example"
    space = load_space(out / "space.yaml", resolve=local)  # resolve: the model paths are read too
    config = RunConfig.load(out / "run.yaml")
    assert config.optimizer.name == "cmaes"
    x0 = config.optimizer.options["x0"]
    assert len(x0) == space.dimension and all(0 <= v <= 1 for v in x0)
    assert all(o.task.startswith("lm_eval:") for o in config.objectives)
    if local:
        assert invoke("space", "show", out / "space.yaml").exit_code == 0
    for file in ("space.yaml", "run.yaml"):  # every top-level field says where it came from
        text = (out / file).read_text()
        for key in yaml.safe_load(text):
            assert comment_above(text, key), f"{file}: {key} has no comment"


def test_the_docs_example_maps_field_by_field(workdir):
    out = convert("docs_example")
    space_text, run_text = (out / "space.yaml").read_text(), (out / "run.yaml").read_text()
    space, run = yaml.safe_load(space_text), yaml.safe_load(run_text)
    # genome: the base leaves models (its genes change nothing); the rest as written
    assert space["base_model"] == "mistralai/Mistral-7B-v0.1"
    assert space["models"] == ["teknium/OpenHermes-2.5-Mistral-7B", "HuggingFaceH4/zephyr-7b-beta",
                               "meta-math/MetaMath-Mistral-7B"]
    assert space["methods"] == ["dare_ties"]
    assert space["parameters"] == {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.0, "high": 1.0}}
    assert space["granularity"] == {"layers_per_group": 8, "filters": ["self_attn", "mlp"]}
    assert space["num_layers"] == 32 and space["dtype"] == "bfloat16"
    assert "genome.layer_granularity: 32 layers in 4 groups" in comment_above(space_text, "layers_per_group")
    assert "genome.normalize: false" in comment_above(space_text, "methods")
    assert "genome.allow_negative_weights: false" in comment_above(space_text, "weight")
    genes = [g.name for g in load_space(out / "space.yaml", resolve=False).genes()]
    assert len(genes) == 4 * 3 * 2 * 3  # groups x models x (weight, density) x (self_attn, mlp, other)
    assert "zephyr-7b-beta.weight[g3][mlp]" in genes
    # tasks: metric,filter split; top-level lm-eval options on each; mergekit-evolve's defaults
    assert run["objectives"] == [
        {"task": "lm_eval:my_task_train", "metric": "acc", "weight": 1.0,
         "apply_chat_template": True, "fewshot_as_multiturn": True},
        {"task": "lm_eval:my_other_task", "metric": "exact_match", "filter": "strict-match", "weight": 0.5,
         "apply_chat_template": True, "fewshot_as_multiturn": True},
    ]
    assert "tasks[1].metric: exact_match,strict-match" in comment_above(run_text, "metric: exact_match")
    assert run["scalarization"] == "weighted_sum" and run["budget"] == {"trials": 100}
    assert run["fidelity"] is None and run["space"] == "space.yaml"
    assert run["optimizer"]["options"]["sigma0"] == pytest.approx(1 / 6, abs=1e-6)
    # mergekit-evolve's start: weights 1/len(models) (the base counts), densities 1
    x0 = dict(zip(genes, run["optimizer"]["options"]["x0"], strict=True))
    assert {v for k, v in x0.items() if ".weight" in k} == {0.25}
    assert {v for k, v in x0.items() if ".density" in k} == {1.0}


def test_the_example_in_the_docs_converts(workdir):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "mergekit_evolve.md").read_text()
    (workdir / "evolve.yml").write_text(re.search(r"```yaml\n(.*?)```", doc, re.S).group(1))
    res = invoke("convert", "mergekit-evolve", "evolve.yml", "--out", "out", "--num-layers", 32)
    assert res.exit_code == 0, res.output
    assert RunConfig.load(workdir / "out" / "run.yaml").fidelity == 100
    assert load_space(workdir / "out" / "space.yaml", resolve=False).dimension == 4 * 2 * 2 * 3


def test_limit_num_fewshot_and_chat_options_go_on_every_objective(workdir):
    run = yaml.safe_load((convert("granularity_filters") / "run.yaml").read_text())
    assert run["fidelity"] == 50
    assert run["objectives"][0]["num_fewshot"] == 3
    neg = yaml.safe_load((convert("negative_weights", "neg") / "run.yaml").read_text())
    assert neg["objectives"][0]["apply_chat_template"] is False
    assert neg["objectives"][0]["fewshot_as_multiturn"] is False
    assert neg["objectives"][0]["metric"] == "acc_norm" and neg["objectives"][0]["weight"] == 2.0


def test_command_line_options_go_where_mergekit_evolve_uses_them(workdir):
    (workdir / "my_tasks").mkdir()
    out = convert("negative_weights", "deep/out", "--task-search-path", "my_tasks", "--max-fevals", 30,
                  "--sigma0", 0.3, "--batch-size", 8, "--device", "cuda")
    run = yaml.safe_load((out / "run.yaml").read_text())
    obj = run["objectives"][0]
    assert obj["include_path"] == ["../../my_tasks"]  # relative to run.yaml's folder
    assert (out / obj["include_path"][0]).resolve() == (workdir / "my_tasks").resolve()
    assert obj["batch_size"] == 8 and run["budget"]["trials"] == 30 and run["device"] == "cuda"
    # signed weights span [-1, 1]: a step of 0.3 in weight units is 0.15 of the cube
    assert run["optimizer"]["options"]["sigma0"] == pytest.approx(0.15)


def test_negative_weights_and_random_init(workdir):
    out = convert("negative_weights")
    space = yaml.safe_load((out / "space.yaml").read_text())
    assert space["parameters"] == {"weight": {"low": -1.0, "high": 1.0}}
    assert "granularity" not in space  # layer_granularity 4 of 4 layers: one group
    x0 = yaml.safe_load((out / "run.yaml").read_text())["optimizer"]["options"]["x0"]
    # random_init: weights drawn from [0, 1), i.e. the cube's upper half here; seeded, so stable
    assert len(x0) == 2 and all(0.5 <= v < 1 for v in x0) and len(set(x0)) == 2
    again = convert("negative_weights", "again")
    assert yaml.safe_load((again / "run.yaml").read_text())["optimizer"]["options"]["x0"] == x0


def test_relative_model_paths_are_rewritten_for_the_output_folder(workdir, tmp_path_factory, monkeypatch):
    out = convert("granularity_filters", "a/b/out").resolve()
    space = yaml.safe_load((out / "space.yaml").read_text())
    assert space["base_model"] == "../../../models/base"
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    loaded = load_space(out / "space.yaml")  # resolves from the space's folder, not the cwd
    assert loaded.num_layers == 4


def test_force_replaces_the_two_files_and_keeps_the_rest(workdir):
    out = workdir / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "run.yaml").write_text("old")
    convert("slerp", out, "--force")
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "run.yaml", "space.yaml"]
    assert RunConfig.load(out / "run.yaml").space == "space.yaml"


# -- the genes mean what mergekit-evolve's genome means ----------------------------------------


def _genotype(space, values: dict[str, float], genome: dict) -> torch.Tensor:
    """mergekit-evolve's genotype (layer groups x models x filter sets x genes) holding
    ``values`` (evomerge gene -> value); the base's own genes, which must not matter, random."""
    from mergekit.evo.genome import METHOD_PARAM_MAPS

    models = [Path(m).name for m in genome["models"]]
    params = METHOD_PARAM_MAPS[genome["merge_method"]]
    sets = len(genome.get("filters") or []) + 1
    geno = torch.rand(len(space.groups()), len(models), sets, len(params), generator=torch.Generator().manual_seed(5))
    slots = space.slots()
    grouped = bool(space.granularity.layers_per_group)
    for name, value in values.items():
        head, brackets = name.split("[")[0], re.findall(r"\[([^\]]+)\]", name)
        g = int(brackets.pop(0)[1:]) if grouped else 0
        slot = slots.index(brackets[0]) if brackets else 0
        if head == "t":  # slerp: t = sigmoid(other's gene - base's gene)
            base, other = models.index(Path(space.base_model).name), models.index(Path(space.models[0]).name)
            geno[g, base, 0, 0], geno[g, other, 0, 0] = 0.0, math.log(value / (1 - value))
            continue
        label, param = head.rsplit(".", 1)
        geno[g, models.index(label), slot, params.index(param)] = value
    return geno


@pytest.mark.parametrize("name", ["granularity_filters", "smooth_one_group", "negative_weights", "dare_ties", "slerp"])
def test_genes_mean_what_mergekit_evolve_means(workdir, name):
    from mergekit.evo.genome import ModelGenome, ModelGenomeDefinition

    from evomerge.merge.engine import merge_to_disk, with_overrides
    from evomerge.testing import run_mergekit

    out = convert(name)
    space = load_space(out / "space.yaml")
    genome = yaml.safe_load((DATA / f"{name}.yml").read_text())["genome"]
    rng = torch.Generator().manual_seed(11)
    genes = space.genes()
    # DARE keeps each entry with probability density: at density 1 it draws nothing, so both agree
    x = [1.0 if ".density" in g.name and name == "dare_ties" else 0.05 + 0.9 * torch.rand(1, generator=rng).item()
         for g in genes]
    values = {g.name: g.value(v) for g, v in zip(genes, x, strict=True)}
    if name == "negative_weights":
        assert min(values.values()) < 0  # signed weights are exercised
    reference = ModelGenome(ModelGenomeDefinition.model_validate(genome))
    config = yaml.safe_load(reference.genotype_merge_config(_genotype(space, values, genome)).to_yaml())
    expected = run_mergekit({**config, "dtype": "float32"}, workdir / "mk")
    result = merge_to_disk(with_overrides(space.decode(x), dtype="float32"), workdir / "ev", search_dirs=[out])
    got = {k: v for f in sorted(result.out.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    assert sorted(got) == sorted(expected)
    for key, ref in expected.items():
        diff = (got[key].double() - ref.double()).abs().max().item()
        assert diff <= 1e-5, f"{name}: {key} differs from mergekit-evolve's merge by {diff}"


# -- the converted config runs as it is -------------------------------------------------------


def _char_family(root: Path) -> None:
    """models/base (a tiny random character-level Llama with its tokenizer) and two experts: the
    base plus small random changes to every weight."""
    import shutil

    from safetensors.torch import save_file

    from evomerge.testing.lm_eval_tasks import save_chat_lm

    base = save_chat_lm(root / "base", seed=3)
    gen = torch.Generator().manual_seed(4)
    for name in ("expert0", "expert1"):
        shutil.copytree(base, root / name)
        weights = root / name / "model.safetensors"
        state = load_file(str(weights))
        save_file({k: v + 0.05 * v.std() * torch.randn(v.shape, generator=gen) for k, v in state.items()},
                  str(weights), metadata={"format": "pt"})


@pytest.fixture
def converted_runnable(tmp_path, monkeypatch) -> Path:
    """runs_as_is.yml converted in a directory holding its models and its lm-eval tasks."""
    from evomerge.testing.lm_eval_tasks import write_registry_tasks

    monkeypatch.chdir(tmp_path)
    _char_family(tmp_path / "models")
    include = write_registry_tasks(tmp_path)
    out = convert("runs_as_is", "converted", "--task-search-path", include.name, "--max-fevals", 3,
                  "--batch-size", 8)
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["objectives"][1] == {
        "task": "lm_eval:evo_gen", "metric": "exact_match", "weight": 0.5, "num_fewshot": 1,
        "include_path": ["../lm_eval_tasks"], "apply_chat_template": False, "fewshot_as_multiturn": False,
        "batch_size": 8}
    return out


def test_the_converted_config_passes_the_dry_run(converted_runnable):
    """Everything the run needs checks out: models, both lm-eval tasks by name through
    include_path with their options, the optimiser's options (x0 against the space), one
    evaluation timed."""
    res = invoke("search", "--dry-run", converted_runnable / "run.yaml")
    assert res.exit_code == 0, res.output
    assert "cmaes" in res.output


@pytest.mark.slow
def test_the_converted_config_runs_as_it_is(converted_runnable, tmp_path):
    res = invoke("search", converted_runnable / "run.yaml", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "3 trials" in res.output.replace("\n", " ")
    front = invoke("front", tmp_path / "run")
    assert front.exit_code == 0, front.output
    assert "evo_mc" in front.output and "evo_gen" in front.output


# -- the commented-YAML writer -------------------------------------------------------------------


def test_rendered_yaml_loads_back_as_the_plain_document():
    doc = {
        "a": Commented("x: y", "a comment " * 30),
        "long": Commented([round(i / 7, 6) for i in range(60)], "wrapped flow list"),
        "items": Commented([Commented({"task": Commented("lm_eval:t", "first key"), "n": 3,
                                       "kw": {"max_gen_toks": 64}}, "item"), {"task": "b"}], "list"),
        "nested": {"deep": {"list": [{"k": [1, "two", None, True]}], "empty": []}},
        "quoted": ["true", "1.5", "- dash", "#hash", "", "two\nlines", "tab\tand 'quote' \"q\" \\"],
        "system_instruction": Commented("Answer briefly.\nThen stop.", "multi-line"),
    }
    text = render(doc, "header\nsecond line")
    assert yaml.safe_load(text) == plain(doc)
    assert all(len(line) <= 100 for line in text.splitlines())
    assert text.startswith("# header\n# second line\n")


def test_write_files_writes_all_or_nothing(tmp_path, monkeypatch):
    import evomerge.scaffold.yaml_writer as writer

    real = writer._write_synced

    def fail_second(path, text):
        if "b.yaml" in path.name:
            raise OSError(28, "No space left on device")
        real(path, text)

    monkeypatch.setattr(writer, "_write_synced", fail_second)
    with pytest.raises(OSError):
        write_files(tmp_path / "new", {"a.yaml": "a: 1\n", "b.yaml": "b: 2\n"})
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no directory, no staging left
    held = tmp_path / "held"
    held.mkdir()
    (held / "a.yaml").write_text("old")
    with pytest.raises(OSError):
        write_files(held, {"a.yaml": "a: 1\n", "b.yaml": "b: 2\n"}, force=True)
    assert [p.name for p in held.iterdir()] == ["a.yaml"] and (held / "a.yaml").read_text() == "old"
    monkeypatch.setattr(writer, "_write_synced", real)
    (tmp_path / "empty").mkdir()  # an empty directory is filled without --force
    assert write_files(tmp_path / "empty", {"a.yaml": "a: 1\n"}) == [tmp_path / "empty" / "a.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "held"]  # nothing staged is left
