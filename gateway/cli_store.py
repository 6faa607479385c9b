"""Command-line verbs (filled in by their capability)."""


def register(verbs) -> None:
    pass
