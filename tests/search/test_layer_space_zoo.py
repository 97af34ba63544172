"""On the block-expansion zoo (slow): a layer-path search beats a parameter-space search with the
same optimiser and budget, on mean test accuracy over the three skills.

The blocks family (`evomerge zoo build --family blocks`) appends one identity block to the
default zoo's base, and each expert trains only that block. A parameter merge has to average three
blocks that learned different things; the path search (search_spaces/zoo_blocks_dfs.yaml) can run
them one after another. The default zoo's base is copied (built here if missing), so this builds
only the three experts (~1.5 min on 2 cores). benchmarks/layer_space.py measures the same over zoo
seeds, and on the 2-layer default zoo, where layer paths do not pay.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evomerge.run import run_search
from evomerge.search.landscape import mean_score, score_landscape
from evomerge.zoo.build import FAMILIES, build_zoo, default_zoo_dir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def blocks_zoo(tmp_path_factory) -> Path:
    default = build_zoo(default_zoo_dir(), log=lambda s: None)
    out = tmp_path_factory.mktemp("zoo-blocks")
    return build_zoo(out, FAMILIES["blocks"](), base_from=default, log=lambda s: None).resolve()


def _best_on_test(tmp_path: Path, zoo: Path, space: str, trials: int) -> dict[str, float]:
    """The shipped space and run config (runs/zoo_blocks_ps.yaml), pointed at ``zoo``."""
    work = tmp_path / space
    work.mkdir()
    text = (ROOT / "search_spaces" / space).read_text().replace("../zoo-blocks/", f"{zoo}/")
    (work / "space.yaml").write_text(text)
    run = yaml.safe_load((ROOT / "runs" / "zoo_blocks_ps.yaml").read_text())
    run.update(space="space.yaml", budget={"trials": trials}, tracking={"enabled": False})
    (work / "run.yaml").write_text(yaml.safe_dump(run))
    run_search(work / "run.yaml", work / "run", log=lambda s: None)
    return score_landscape(zoo, work / "run", n_random=0, plain=False)["rows"]["search_best"]


def test_a_layer_path_beats_the_parameter_merge_on_the_blocks_zoo(tmp_path, blocks_zoo):
    # 2026-11-30, previous VM, zoo seed 0, 120 trials each: parameter 0.659 (reversal 0.000), layer
    # path 0.965 (0.999 / 0.908 / 0.989); seeds 1 and 2: +0.32 and +0.14 (benchmarks/README.md).
    # The test runs half that budget. On the current VM (another CPU, so another world) the same
    # test gave 0.928 against 0.868 (+0.06). The margin asked is the test split's noise several
    # times over: a mean over 3 x 1024 prompts has a standard error <= 0.009.
    parameter = _best_on_test(tmp_path, blocks_zoo, "zoo_blocks_ps.yaml", trials=60)
    layer = _best_on_test(tmp_path, blocks_zoo, "zoo_blocks_dfs.yaml", trials=60)
    assert mean_score(layer) >= mean_score(parameter) + 0.03, (layer, parameter)
    assert min(layer.values()) >= 0.7, layer  # every skill survives the path, not only the mean
