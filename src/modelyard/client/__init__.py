"""The Python SDK: a REST client for the control plane and an invoker for the gateway."""

from modelyard.client.client import Client, InvokeResult, locate_server

__all__ = ["Client", "InvokeResult", "locate_server"]
