"""One rollout layer for every sampling path (ppo, rrhf ``candidates: generate``, grpo/rloo, eval, chat):
prompt token ids and one :class:`Sampling` in, a :class:`Rollouts` out (token ids, the response mask, the
log-probs of the sampled tokens under the sampling distribution when asked, text decoded one way).

Two engines behind it, chosen with ``rollout_engine`` (:class:`RolloutOptions`): ``transformers`` (the
model's own ``generate``: the engine *is* the training model, nothing to sync) and ``vllm`` (a vLLM engine
colocated in this process, its weights pushed from the policy after every optimizer step with
:meth:`VLLMEngine.sync_weights`). docs/rollouts.md has the set-up for CPU and GPU.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Protocol

from easyrlhf_core.kit.config import invalid, option

if TYPE_CHECKING:
    import torch

__all__ = [
    "ENGINES",
    "RolloutOptions",
    "Sampling",
    "Rollouts",
    "RolloutEngine",
    "TransformersEngine",
    "VLLMEngine",
    "build_engine",
    "EngineSync",
    "generate_with_scores",
    "policy_weights",
    "logprob_agreement",
    "vllm_machine_settings",
]

#: The rollout engines ``rollout_engine`` may name.
ENGINES = ("transformers", "vllm")


@dataclass
class RolloutOptions:
    """Which engine samples the rollouts, and the vLLM engine's settings; mix into a method config (every
    online method has it; ``easyrlhf eval`` takes ``--rollout-engine``)."""

    rollout_engine: Literal["transformers", "vllm"] = option(
        "transformers",
        "Engine that samples completions: transformers (the model's generate) or vllm (a vLLM engine in "
        "this process, weights synced from the policy after every optimizer step; pip install vllm).",
        deprecated_names=("generation_backend",),
    )
    vllm_kv_cache_gib: float = option(
        0.0, "vLLM on CPU: KV-cache size in GiB; 0: from the machine (5% of memory, 1 to 8 GiB)."
    )
    vllm_gpu_memory_utilization: float = option(
        0.3, "vLLM on a GPU: the share of device memory the engine may take beside training."
    )
    vllm_enforce_eager: bool | None = option(
        None,
        "vLLM: skip graph capture/compilation; empty: on CPU yes (compiling takes minutes and saves "
        "little there), on a GPU no.",
    )
    vllm_cpu_threads: str = option(
        "",
        "vLLM on CPU: cores its worker processes bind (VLLM_CPU_OMP_THREADS_BIND, e.g. 0-1), read only when "
        "vLLM runs its engine in processes of its own (VLLM_ENABLE_V1_MULTIPROCESSING=1); the in-process engine "
        "(the default) computes on this process's torch threads. Empty: every core this process may use.",
    )

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.vllm_kv_cache_gib < 0:
            raise invalid("vllm_kv_cache_gib", "must be >= 0 (0: from the machine)")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise invalid("vllm_gpu_memory_utilization", "must be in (0, 1]")

    def validate_for_run(self) -> None:
        """The mixins' checks, then :meth:`validate_rollout_engine`."""
        parent = getattr(super(), "validate_for_run", None)
        if parent is not None:
            parent()
        self.validate_rollout_engine()

    def validate_rollout_engine(self) -> None:
        """A run with ``rollout_engine: vllm`` needs vLLM importable: one line before any model loads."""
        import importlib.util

        if self.rollout_engine == "vllm" and importlib.util.find_spec("vllm") is None:
            from easyrlhf_core.kit.errors import ConfigError

            raise ConfigError(
                "vLLM is not installed: pip install 'easyrlhf[vllm]' on a GPU machine, or the CPU build as "
                "docs/rollouts.md says; or use rollout_engine: transformers",
                where="rollout_engine: vllm",
            )


@dataclass
class Sampling:
    """How one rollout call picks tokens: greedy, or sampled from ``softmax(logits / temperature)`` cut by
    ``top_k``/``top_p``/``min_p`` (0, 1.0 and 0.0: off). ``repetition_penalty`` (1.0: off; transformers' and
    vLLM's rule: the logit of every token already in the prompt or the response is divided by it when positive,
    multiplied when negative) applies to greedy decoding too. The training paths leave ``min_p`` and
    ``repetition_penalty`` off (``easyrlhf chat`` sets them from a model's recommended settings). ``seed``: the
    same seed gives the same rollouts (vllm: one seed per row, derived from it; transformers: torch's generator
    seeded once per call)."""

    max_new_tokens: int
    stop_ids: list[int]
    pad_token_id: int
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    @classmethod
    def from_config(
        cls, config: Any, max_new_tokens: int, stop_ids: list[int], pad_token_id: int, seed: int | None = None
    ) -> Sampling:
        """A method's training sampling: its config's ``temperature``, ``top_k`` and ``top_p``, the rest off."""
        return cls(
            max_new_tokens,
            stop_ids,
            pad_token_id,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            seed=seed,
        )

    def settings(self) -> dict[str, Any] | None:
        """The sampled settings (None: greedy), as :func:`easyrlhf_core.kit.causal_lm.generation_config` takes."""
        if self.greedy:
            return None
        settings: dict[str, Any] = {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}
        if self.min_p > 0:
            settings["min_p"] = self.min_p
        return settings

    def penalties(self) -> dict[str, Any]:
        """The ``GenerationConfig`` fields that apply greedy or sampled (empty when off)."""
        return {"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1.0 else {}


@dataclass
class Rollouts:
    """What one rollout call sampled, one row per prompt; tensors on CPU unless the engine's model is elsewhere.

    ``response_ids`` are right-padded with the pad id after each row's stop token (the layout ``generate``
    returns); ``response_mask`` is 1 on the sampled tokens up to and including the stop token. ``logprobs``:
    the engine's log-prob of each sampled token under the distribution it sampled from (0 on padding), when
    asked; the trainer recomputes its own (:func:`logprob_agreement` compares them)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor | None
    texts: list[str]


class RolloutEngine(Protocol):
    """An engine behind the rollout layer."""

    name: str

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling, logprobs: bool = False) -> Rollouts:
        """One response per prompt."""
        ...

    def sync_weights(self, model: Any) -> None:
        """Make the engine sample from ``model``'s current weights (nothing to do when the engine is the model)."""
        ...

    def close(self) -> None:
        """Free the engine's memory."""
        ...


def _response_mask(responses: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1 up to and including the first stop token of each row (every token when a row has none)."""
    import torch

    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    after_stop = (is_stop.long().cumsum(dim=1) - is_stop.long()) > 0
    return (~after_stop).long()


def _texts(tokenizer: Any, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
    from easyrlhf_core.kit.causal_lm import decode_response

    lengths = mask.sum(dim=1).tolist()
    return [decode_response(tokenizer, row[:n]) for row, n in zip(responses.cpu(), lengths)]


class TransformersEngine:
    """The model's own ``generate`` (left padding, KV cache), with the settings pinned
    (:func:`easyrlhf_core.kit.causal_lm.generate`). The caller provides the context it needs: ``torch.no_grad``
    is applied here; autocast and a ZeRO-3 gather (:func:`easyrlhf_core.kit.zero.gathered_for_generation`) are
    the caller's."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, share_prompts: bool = True, **generate_settings: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.share_prompts = share_prompts  # rows with the same prompt read it once (kit.shared_prefill)
        self.generate_settings = generate_settings  # extra GenerationConfig fields (bos_token_id, ...)

    def _device(self) -> Any:
        return next(self.model.parameters()).device

    def generate(
        self, prompt_ids: list[list[int]], sampling: Sampling, logprobs: bool = False, **kwargs: Any
    ) -> Rollouts:
        """One response per prompt; ``kwargs`` (a ``streamer``) go to ``generate``."""
        import torch

        from easyrlhf_core.kit.causal_lm import generate, generation_config, left_pad, logprobs_from_logits

        queries, query_mask = left_pad(prompt_ids, sampling.pad_token_id)
        device = self._device()
        queries, query_mask = queries.to(device), query_mask.to(device)
        config = generation_config(
            sampling.max_new_tokens,
            sampling.stop_ids,
            sampling.pad_token_id,
            sampling.settings(),
            **{**sampling.penalties(), **self.generate_settings},
        )
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with torch.no_grad():
            if not logprobs:
                responses = generate(self.model, queries, query_mask, config, self.share_prompts, **kwargs)
                scores = None
            else:
                config.output_scores = True
                config.return_dict_in_generate = True
                responses, processed = generate_with_scores(
                    self.model, queries, query_mask, config, self.share_prompts, **kwargs
                )
                scores = logprobs_from_logits(processed, responses)
        mask = _response_mask(responses, sampling.stop_ids)
        if scores is not None:
            scores = scores * mask
        return Rollouts(queries, query_mask, responses, mask, scores, _texts(self.tokenizer, responses, mask))

    def sync_weights(self, model: Any) -> None:
        """Nothing to do: this engine samples from the training model itself."""

    def close(self) -> None:
        """Nothing to free."""


def generate_with_scores(
    model: Any,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    config: Any,
    share_prompts: bool = True,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new token ids, the processed scores they were sampled from)`` of one pinned ``generate`` call
    (``config`` with ``output_scores`` and ``return_dict_in_generate`` on): the scores are the logits after
    temperature, top-k and top-p, so their log-softmax is the sampling distribution."""
    import torch

    from easyrlhf_core.kit.causal_lm import model_defaults_hidden
    from easyrlhf_core.kit.shared_prefill import generate_sharing_prompts

    run = functools.partial(generate_sharing_prompts, model.generate, model) if share_prompts else model.generate
    with model_defaults_hidden(model):
        out = run(input_ids=queries, attention_mask=query_mask, generation_config=config, **kwargs)
    return out.sequences[:, queries.shape[1] :], torch.stack(out.scores, dim=1)


# --------------------------------------------------------------------------------------------------
# vLLM


def vllm_machine_settings(options: RolloutOptions, on_gpu: bool) -> dict[str, str]:
    """The environment a colocated vLLM engine starts with: in-process (no engine subprocess: weights are pushed
    without a copy through a pipe), its log on stderr at warning level, and on CPU the KV cache and the cores it
    binds, from the machine unless the options (or the environment) say otherwise."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    for key, value in (("VLLM_LOGGING_STREAM", "ext://sys.stderr"), ("VLLM_LOGGING_LEVEL", "WARNING")):
        if key not in os.environ:  # stdout is the command's own (eval --json); vLLM's start-up notes are noise
            env[key] = value
    if on_gpu:
        return env
    import psutil

    if options.vllm_kv_cache_gib > 0:
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{options.vllm_kv_cache_gib:g}"
    elif "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        total_gib = psutil.virtual_memory().total / 2**30
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(min(8, max(1, total_gib * 0.05))))
    if options.vllm_cpu_threads:
        env["VLLM_CPU_OMP_THREADS_BIND"] = options.vllm_cpu_threads
    elif "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
    return env


class VLLMEngine:
    """A vLLM engine in this process, started from the policy's model directory. Its dtype follows the run's
    ``precision`` (fp32 on CPU: vLLM's CPU bf16 is emulated here), its sampler reports the log-probs of the
    processed distribution (after temperature/top-k/top-p), the model's own ``generation_config`` is ignored
    (our :class:`Sampling` alone decides), and :meth:`sync_weights` pushes the policy's weights after each
    optimizer step (LoRA merged, ZeRO-3 gathered) through vLLM's ``reload_weights``, which works in fp32 on
    CPU and on GPUs.

    Each process of a multi-process run owns a tensor-parallel-1 engine: vLLM finds the training's process group
    initialised and lays its own groups over it (one rank per tensor-parallel group), so every rank must start
    its engine at the same point (the trainers do, at set-up); the engine is seeded ``seed + rank``, and
    :meth:`close` leaves the training's process group alone (vLLM's teardown would destroy it)."""

    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer: Any,
        options: RolloutOptions,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int = 2048,
        log: Any = None,
    ) -> None:
        import time

        import torch

        on_gpu = torch.cuda.is_available()
        os.environ.update(vllm_machine_settings(options, on_gpu))
        from vllm import LLM

        eager = options.vllm_enforce_eager if options.vllm_enforce_eager is not None else not on_gpu
        self.shares_process_group = shared_process_group()
        rank = torch.distributed.get_rank() if self.shares_process_group else 0
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"gpu_memory_utilization": options.vllm_gpu_memory_utilization} if on_gpu else {}
        self.llm = LLM(
            model=str(model_dir),
            dtype=dtype,
            enforce_eager=eager,
            seed=seed + rank,
            tensor_parallel_size=1,
            max_model_len=max_model_len,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",
            enable_prefix_caching=False,
            **kwargs,
        )
        self.start_seconds = time.perf_counter() - started
        self.tokenizer = tokenizer
        self.calls = 0
        if log is not None:
            mode = "eager" if eager else "compiled"
            log(f"rollouts: vLLM engine ({dtype}, {mode}) started in {self.start_seconds:.1f} s")

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling, logprobs: bool = False) -> Rollouts:
        import torch
        from vllm import SamplingParams

        from easyrlhf_core.kit.causal_lm import left_pad

        self.calls += 1
        base = sampling.seed if sampling.seed is not None else None
        params = [
            SamplingParams(
                n=1,
                temperature=0.0 if sampling.greedy else sampling.temperature,
                top_k=sampling.top_k if sampling.top_k > 0 else -1,
                top_p=sampling.top_p,
                min_p=0.0 if sampling.greedy else sampling.min_p,
                repetition_penalty=sampling.repetition_penalty,
                max_tokens=sampling.max_new_tokens,
                stop_token_ids=list(sampling.stop_ids),
                logprobs=0 if logprobs else None,
                seed=None if base is None else (base * 1_000_003 + row) % 2**31,
                detokenize=False,
            )
            for row in range(len(prompt_ids))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params, use_tqdm=False)
        completions = [list(o.outputs[0].token_ids) for o in outputs]
        width = max(1, max(len(c) for c in completions))
        responses = torch.full((len(completions), width), sampling.pad_token_id, dtype=torch.long)
        picked = torch.zeros((len(completions), width), dtype=torch.float32) if logprobs else None
        for row, (ids, output) in enumerate(zip(completions, outputs)):
            if ids:
                responses[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if picked is not None and output.outputs[0].logprobs:
                values = [step[token].logprob for step, token in zip(output.outputs[0].logprobs, ids)]
                picked[row, : len(values)] = torch.tensor(values, dtype=torch.float32)
        mask = torch.zeros_like(responses)
        for row, ids in enumerate(completions):
            mask[row, : len(ids)] = 1
        queries, query_mask = left_pad(prompt_ids, sampling.pad_token_id)
        return Rollouts(queries, query_mask, responses, mask, picked, _texts(self.tokenizer, responses, mask))

    def sync_weights(self, model: Any) -> None:
        """Push ``model``'s weights (a transformers causal LM, maybe PEFT-wrapped or ZeRO-3 partitioned: merged
        and gathered for the push, left as they were) into the engine."""
        from easyrlhf_core.kit.zero import gathered

        with gathered(model):
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": policy_weights(model)})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Free the engine. In a multi-process run, vLLM's teardown would destroy the training's (default)
        process group with its own: that group is kept (vLLM's groups are destroyed), so the training goes on
        with its collectives."""
        import gc

        import torch.distributed as dist

        keep = self.shares_process_group and dist.is_initialized()
        destroy = dist.destroy_process_group

        def all_but_the_default(group: Any = None, *args: Any, **kwargs: Any) -> None:
            if group is not None and group is not dist.GroupMember.WORLD:  # vLLM's own groups go
                destroy(group, *args, **kwargs)

        if keep:
            dist.destroy_process_group = all_but_the_default
        try:
            del self.llm
            gc.collect()
        finally:
            dist.destroy_process_group = destroy


def shared_process_group() -> bool:
    """Whether this process is one rank of several in an initialised process group (the training's), which a
    vLLM engine started now lays its groups over."""
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def policy_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of ``model`` as its saved checkpoint names them: a PEFT model's adapters merged into
    the base weights (computed here, the adapters untouched), wrapper prefixes removed."""

    from easyrlhf_core.kit.model_loading import unwrap

    model = unwrap(model)
    if not hasattr(model, "peft_config"):
        for name, tensor in model.state_dict().items():
            yield name, tensor.detach()
        return
    base = model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    for module_name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            weight = module.base_layer.weight.detach()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            merged[f"{module_name}.weight"] = weight
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        clean = name.replace(".base_layer", "")
        if clean.endswith(".weight") and clean in merged:
            yield clean, merged[clean]
        else:
            yield clean, tensor.detach()


def logprob_agreement(engine: torch.Tensor, trainer: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the engine's log-probs of the sampled tokens are from the trainer's, over ``mask``: mean and
    max absolute difference (logged each step as ``rollout/logprob_diff_mean``/``_max``; a drift between the
    engine and the trainer shows here, never silently)."""
    diff = (engine.float() - trainer.float()).abs() * mask
    count = mask.sum().clamp(min=1)
    return {
        "rollout/logprob_diff_mean": float(diff.sum() / count),
        "rollout/logprob_diff_max": float(diff.max()) if diff.numel() else 0.0,
    }


class EngineSync:
    """Keeps an engine in step with training: before each rollout call, :meth:`before_rollout` pushes the policy's
    weights when an optimizer step has changed them since the last push (the same condition on every process:
    a ZeRO-3 push is a collective), and gives the call's sampling seed: from the run's seed, the process, the
    optimizer step and the calls already made at it, so processes sample differently and a resumed run samples
    what the uninterrupted one did. The transformers engine samples from the model itself with the process's
    seeded generator: no push, no seed (None)."""

    def __init__(self, engine: RolloutEngine, seed: int, rank: int) -> None:
        self.engine, self.seed, self.rank = engine, seed, rank
        self.step: int | None = None  # the optimizer step whose weights the engine holds (None: none pushed)
        self.calls = 0  # rollout calls made at that step

    def before_rollout(self, model: Any, step: int) -> int | None:
        """Push ``model``'s weights unless the engine holds step ``step``'s already; the call's seed."""
        if self.engine.name == "transformers":
            return None
        if step != self.step:
            self.engine.sync_weights(model)
            self.step, self.calls = step, 0
        self.calls += 1
        return rollout_seed(self.seed, self.rank, step, self.calls)


def rollout_seed(seed: int, rank: int, step: int, call: int) -> int:
    """A seeded engine's seed for one rollout call (call 1, 2, ... of optimizer step ``step`` on process
    ``rank``): distinct across processes, steps and calls for any run seed below 10^5."""
    return ((seed * 100_003 + rank) * 1_000_003 + step) * 1_009 + call


def build_engine(
    options: RolloutOptions,
    model: Any,
    tokenizer: Any,
    model_dir: str | Path | None = None,
    precision: str = "fp32",
    seed: int = 0,
    max_model_len: int = 2048,
    log: Any = None,
    **generate_settings: Any,
) -> RolloutEngine:
    """The engine ``options.rollout_engine`` names, for ``model`` (transformers) or started from ``model_dir``
    (vllm; its weights then follow ``model`` through :meth:`~VLLMEngine.sync_weights`)."""
    if options.rollout_engine == "transformers":
        return TransformersEngine(model, tokenizer, **generate_settings)
    if model_dir is None:
        raise ValueError("the vllm engine starts from a model directory")
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
    return VLLMEngine(model_dir, tokenizer, options, dtype=dtype, seed=seed, max_model_len=max_model_len, log=log)
