"""The decision path: validate -> classify -> decide -> route, and the pipeline that
runs it against the store. Everything but ``pipeline`` is pure over values."""
