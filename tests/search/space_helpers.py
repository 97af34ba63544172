"""A parameter space over a tiny family (see evomerge.testing.make_family), as a mapping."""


def ps_data(family, **over) -> dict:
    data = {
        "base_model": str(family["base"]),
        "models": [str(family["expert0"]), str(family["expert1"])],
        "methods": ["task_arithmetic", "ties"],
        "parameters": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.2, "high": 1.0}},
        "num_layers": 3,
    }
    data.update(over)
    return data
