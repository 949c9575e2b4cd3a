"""The runtime: what drives a run (lifecycle, registry, config layering, launcher, run directory, tracking,
plots, model card, summary). Plugins never import it: they get a :class:`~easyrlhf_core.kit.context.RunContext`."""
