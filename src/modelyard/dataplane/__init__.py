"""The data plane: the request path from a client to a replica and back."""
