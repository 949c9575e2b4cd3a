"""DeepSpeed ZeRO, the parts every method shares (public: a plugin method with its own loop uses them too).

- :func:`start_deepspeed`: at the start of a rank whose config has ``deepspeed``, the process group and
  DeepSpeed's communication layer over it, before any model loads. ZeRO-3 loads models partitioned
  (``deepspeed.zero.Init``, used by transformers when a ZeRO-3 config is alive), and DeepSpeed reads the
  world size for that from its own layer: left uninitialised it counts one process and refuses the batch
  arithmetic (``train_batch_size ... 8 != 4 * 1 * 1``).
- :func:`gathered` / :func:`gathered_for_generation`: a ZeRO-3 model's full parameters for a while (to save
  it, to sample from it); both do nothing when the parameters are not partitioned.

DeepSpeed is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Iterator

__all__ = [
    "gathered",
    "gathered_for_generation",
    "inference_engine",
    "loading_whole",
    "is_partitioned",
    "fill_size_autos",
    "start_deepspeed",
]

#: What a launcher (torchrun, accelerate) sets for every rank; DeepSpeed falls back to MPI discovery
#: (``mpi4py``) when one is missing.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def start_deepspeed(timeout_seconds: float = 1800) -> None:
    """The process group (gloo on CPU, nccl on GPUs, from the launcher's environment; collectives time out
    after ``timeout_seconds``) and DeepSpeed's communication layer on top of it. Idempotent; needs the
    launcher's variables (:data:`LAUNCHER_ENV`): ``easyrlhf run --deepspeed`` always starts its ranks
    through a launcher, one process included."""
    import datetime

    import torch.distributed as dist

    from easyrlhf_core.kit.distributed import start_process_group

    missing = [name for name in LAUNCHER_ENV if name not in os.environ]
    if missing:
        from easyrlhf_core.kit.errors import ConfigError

        raise ConfigError(
            f"a DeepSpeed run needs the launcher's environment ({', '.join(missing)} not set); "
            f"start it with `easyrlhf run` (it launches every --deepspeed run) or torchrun",
            where="--deepspeed",
        )
    start_process_group(timeout_seconds)
    import deepspeed

    with contextlib.redirect_stdout(io.StringIO()):  # "DeepSpeed ...shm_comm_op built successfully", per rank
        deepspeed.init_distributed(
            dist_backend=dist.get_backend(),
            auto_mpi_discovery=False,
            verbose=False,
            timeout=datetime.timedelta(seconds=timeout_seconds),
        )


def stop_zero_init() -> None:
    """After training: models loaded later in this process (the run summary's scoring, on rank 0 alone) load
    whole and locally, not partitioned under ``deepspeed.zero.Init`` (a collective the other ranks, done,
    would never join). transformers keeps the ZeRO-3 config of the last trainer's arguments for that."""
    try:
        from transformers.integrations import unset_hf_deepspeed_config  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - transformers without the DeepSpeed integration
        return
    unset_hf_deepspeed_config()


def fill_size_autos(config: dict[str, Any], hidden_size: int) -> None:
    """The ``"auto"`` bucket sizes of a DeepSpeed config from the model's hidden size, as the Trainer fills
    them (accelerate can only when the prepared module has a ``config``: a container of models has not)."""
    zero = config.get("zero_optimization") or {}
    for key, value in (
        ("reduce_bucket_size", hidden_size * hidden_size),
        ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
        ("stage3_param_persistence_threshold", 10 * hidden_size),
    ):
        if zero.get(key) == "auto":
            zero[key] = value


@contextlib.contextmanager
def loading_whole() -> Iterator[None]:
    """Models loaded inside the block load whole on this rank even while a ZeRO-3 config is alive (a
    trainer's arguments, accelerate's DeepSpeed plugin): for a frozen scorer each rank calls on its own, at
    its own times (a reward model), which a partitioned model (one collective per layer) cannot serve.
    transformers decides from the module global its ``HfDeepSpeedConfig`` registers; it is put back."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # pragma: no cover - transformers without the DeepSpeed integration
        yield
        return
    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if saved is not None and saved() is not None:
            hf_deepspeed.set_hf_deepspeed_config(saved())


def inference_engine(model: Any, training_config: dict[str, Any], micro_batch: int) -> Any:
    """A frozen ``model`` as DeepSpeed expects it next to a ZeRO-3 training engine: partitioned the same way
    (stage 3, parameter offload kept), no optimizer. ``training_config`` is the training engine's resolved
    DeepSpeed config; returns the engine (call it like the model)."""
    import copy

    import deepspeed

    config = copy.deepcopy(training_config)
    for key in ("optimizer", "scheduler", "train_batch_size"):
        config.pop(key, None)
    config.setdefault("zero_optimization", {}).pop("offload_optimizer", None)
    fill_size_autos(config, getattr(getattr(model, "config", None), "hidden_size", None) or 1024)
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["gradient_accumulation_steps"] = 1
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def is_partitioned(model: Any) -> bool:
    """True when ``model``'s parameters are ZeRO-3 partitions (each rank holds a slice)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def gathered(model: Any) -> Iterator[None]:
    """Every parameter of a ZeRO-3 ``model`` whole on every rank inside the block (read-only: changes are
    not written back to the partitions), released after. Collective: every rank must enter. Does nothing
    for a model that is not partitioned."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


@contextlib.contextmanager
def gathered_for_generation(engine: Any, model: Any) -> Iterator[None]:
    """``model`` (a module inside the DeepSpeed ``engine``) whole on every rank for ``generate``, with the
    engine's ZeRO-3 fetch/release hooks off, so the token-by-token forward passes run locally: no
    collective per layer and step, and ranks may stop generating at different lengths. The hooks come
    back (their module-order trace reset) and the gathered copies are released on exit. Collective."""
    offload = _parameter_offload(engine)
    if offload is None or not is_partitioned(model):
        yield
        return
    with gathered(model):
        for param in _ds_params(offload.module):
            param.ds_active_sub_modules.clear()
        for hook in [*offload.forward_hooks, *offload.backward_hooks]:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            coordinator = getattr(offload, "param_coordinator", None)
            if coordinator is not None and not coordinator.is_invalid_trace():
                coordinator._invalidate_trace()
            offload._register_deepspeed_module(offload.module)


def _parameter_offload(engine: Any) -> Any:
    """The ZeRO-3 object holding the engine's parameter hooks (None below stage 3)."""
    optimizer = getattr(engine, "optimizer", None)
    if optimizer is None:
        return None
    offload = getattr(optimizer, "parameter_offload", None)
    return offload if offload is not None and hasattr(offload, "forward_hooks") else None


def _ds_params(module: Any) -> list[Any]:
    params = [p for p in module.parameters(recurse=True)]
    for sub in module.modules():
        if hasattr(sub, "ds_external_parameters"):
            params.extend(p for _, p in sub.ds_external_parameters())
    return [p for p in params if hasattr(p, "ds_active_sub_modules")]
