"""EasyRLHF core: ``kit/`` (what a plugin imports), ``runtime/`` (the run lifecycle), ``commands/`` (the CLI).

Nothing heavy is imported here: torch and transformers load only when a run needs them.
"""

#: The installed EasyRLHF version.
__version__ = "0.1.0"

from easyrlhf_core.kit.hooks import hookimpl  # noqa: E402  (pluggy only; cheap)

__all__ = ["hookimpl", "__version__"]
