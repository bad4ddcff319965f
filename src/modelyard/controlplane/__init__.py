"""The control plane: the REST API, the store, and the controllers that converge to the specs."""
