"""Controllers: a pure ``plan(desired, observed) -> actions`` and an applier per resource."""
