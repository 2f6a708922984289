"""The ``herald`` command."""
