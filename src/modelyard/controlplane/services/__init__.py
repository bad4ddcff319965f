"""Control-plane logic behind the thin routers: validation against the store, revisions, views."""
