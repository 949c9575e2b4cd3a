"""The commands: ``easyrlhf`` (cli), ``easyrlhf chat``, ``easyrlhf eval``, ``easyrlhf new-plugin``, and the
docs/kit.md generator."""
