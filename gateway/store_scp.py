"""(placeholder: filled in by its capability)"""


def add_to(ae, app) -> list:
    """Add presentation contexts to ``ae``; return the event handlers bound to ``app``."""
    return []


def on_start(app) -> None:
    """Work to do once when the server starts (before it listens)."""
