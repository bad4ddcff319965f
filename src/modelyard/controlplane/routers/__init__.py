"""Thin HTTP routers over services/."""
