"""EasyRLHF's built-in plugins. Each module here is registered through the ``easyrlhf`` entry-point
group in ``pyproject.toml``, exactly as a third-party plugin package would be."""
