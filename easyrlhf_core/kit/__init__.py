"""The plugin kit: everything a plugin may import, and nothing else (the built-ins import only this package).

Base classes and hooks (``bases``, ``hooks``, ``context``), options (``config``, ``presets``), data (``shapes``,
``rows``, ``data_loading``, ``dataset_cache``), models (``model_loading``, ``model_dirs``, ``causal_lm``,
``chat_template``, ``shared_prefix_*``, ``completion_logprobs``), the Trainer-method kit (``trainer_method``,
``trainer_run``), a custom loop's parts (``stopping``, ``distributed``, ``zero``, ``checkpoints``, ``metrics``,
``faults``, ``trackers``), the online kit (``rewards``, ``online``, ``online_trl``, ``rl_math``), the summary's
findings (``findings``, ``stats``) and tests (``testing``, ``tiny_models``). docs/kit.md lists every public name.
Importing it imports nothing heavy: torch and transformers load inside the functions that need them.
"""
