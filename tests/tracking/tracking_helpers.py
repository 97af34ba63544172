"""A miniature zoo for tracking tests (trains in about a second)."""

from evomerge.zoo.build import Architecture, ExpertSpec, Stage, ZooConfig

MINI = ZooConfig(
    architecture=Architecture(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
    base=Stage(steps=3, lr=1e-3, batch_size=8),
    experts=(
        ExpertSpec(name="add", skill="addition", steps=2, lr=1e-3, batch_size=8, seed=1),
        ExpertSpec(name="rev", skill="reversal", steps=2, lr=1e-3, batch_size=8, seed=2),
    ),
    workers=1,
)
