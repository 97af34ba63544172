"""Child-process entry point: ``python -m evomerge.zoo.expert BASE OUT SPEC_JSON THREADS``."""

import json
import sys
from pathlib import Path

from evomerge.zoo.build import ExpertSpec, train_expert

if __name__ == "__main__":
    base, out, spec, mixture, threads = sys.argv[1:6]
    spec_ = ExpertSpec.model_validate_json(spec)
    result = train_expert(Path(base), Path(out), spec_, json.loads(mixture), int(threads))
    print(json.dumps(result))
