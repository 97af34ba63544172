"""Child-process entry point: ``python -m evomerge.zoo.expert BASE OUT SPEC MIXTURE THREADS SEED``."""

import json
import sys
from pathlib import Path

from evomerge.zoo.build import ExpertSpec, train_expert

if __name__ == "__main__":
    base, out, spec, mixture, threads, seed = sys.argv[1:7]
    spec_ = ExpertSpec.model_validate_json(spec)
    result = train_expert(Path(base), Path(out), spec_, json.loads(mixture), int(threads), int(seed))
    print(json.dumps(result))
