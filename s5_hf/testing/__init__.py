"""Test helpers: `LocalHub`, a loopback stand-in for the Hugging Face Hub (see `hub_server`)."""

__all__ = ["HubEscapeError", "LocalHub", "RequestRecord"]


def __getattr__(name: str):
    # Imported on first use, so that `python -m s5_hf.testing.hub_server` does not import the module twice.
    if name in __all__:
        from . import hub_server

        return getattr(hub_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
