"""What ``easyrlhf eval`` runs: reward-model metrics or policy metrics. Every input is checked (model kinds,
reward, dataset and its shape) and the data is loaded before any model loads."""

from __future__ import annotations

import functools

import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from easyrlhf_core.commands.eval.data import EvalData, load_eval_data, pick_shape
from easyrlhf_core.commands.eval.generation import Answer, answer_engine, generate_answers
from easyrlhf_core.commands.eval.report import EvalReport
from easyrlhf_core.commands.eval.request import EvalRequest
from easyrlhf_core.kit import chat_template as chat
from easyrlhf_core.kit.completion_logprobs import (
    CompletionLogProb,
    completion_logprobs,
    pair_gaps,
    pair_margins,
    truncated_count,
)
from easyrlhf_core.kit.errors import ConfigError, EasyRLHFError
from easyrlhf_core.kit.model_dirs import (
    ModelRef,
    inspect_model,
    load_ref_policy,
    load_ref_tokenizer,
    quiet_transformers,
    require_kind,
)
from easyrlhf_core.kit.rewards import Judge, named_judge, one_reward_error, reward_model_judge
from easyrlhf_core.kit.shapes import Message, Shape
from easyrlhf_core.kit.stats import length_baseline, mean, pairwise
from easyrlhf_core.runtime.registry import Registry, get_registry

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(f"[easyrlhf eval] {message}", file=sys.stderr, flush=True)


def check_request(request: EvalRequest) -> None:
    """Numbers in range; the rollout engine installed."""
    if request.rollout_engine == "vllm":
        from easyrlhf_core.kit.rollout import RolloutOptions

        RolloutOptions(rollout_engine="vllm").validate_rollout_engine()
    for flag, value, minimum in (
        ("--limit", request.limit, 1),
        ("--batch-size", request.batch_size, 1),
        ("--max-new-tokens", request.max_new_tokens, 1),
        ("--max-length", request.max_length, 2),
    ):
        if value is not None and value < minimum:
            raise ConfigError(f"must be >= {minimum}, got {value}", where=flag)
    if request.split not in ("eval", "all"):
        raise ConfigError(f"must be 'eval' or 'all', got {request.split!r}", where="--split")


def evaluate(request: EvalRequest, registry: Registry | None = None, log: Log = stderr_log) -> EvalReport:
    """Evaluate ``request.model``: a reward model (sequence classifier) or a policy (causal LM)."""
    registry = registry or get_registry()
    check_request(request)
    model = inspect_model(request.model, "--model", request.trust_remote_code)
    with quiet_transformers():
        if request.env is not None:
            from easyrlhf_core.commands.eval.episodes import evaluate_environment

            require_kind(model, "causal_lm", "an environment is played by a policy (a causal LM)")
            return evaluate_environment(request, registry, model, log)
        if model.kind == "reward_model":
            return evaluate_reward_model(request, registry, model, log)
        return evaluate_policy(request, registry, model, log)


def _load(request: EvalRequest, registry: Registry, wanted: list[Shape]) -> EvalData:
    shape = pick_shape(registry, request.dataset, wanted)
    return load_eval_data(
        registry, request.dataset, shape, request.data_files, request.split, request.limit, request.seed
    )


def _report(kind: Literal["reward_model", "policy"], request: EvalRequest, data: EvalData) -> EvalReport:
    return EvalReport(
        kind=kind,
        model=request.model,
        dataset=request.dataset,
        split=request.split,
        seed=request.seed,
        data_files=list(request.data_files),
        notes=list(data.notes),
    )


# --------------------------------------------------------------------------------------------------
# Reward model


def evaluate_reward_model(request: EvalRequest, registry: Registry, model: ModelRef, log: Log) -> EvalReport:
    """Pairwise accuracy (ties half) with a Wilson 95% interval, next to the longer-response-wins baseline."""
    for flag, value in (
        ("--reference", request.reference),
        ("--reward-model", request.reward_model),
        ("--reward", request.reward),
    ):
        if value:
            raise ConfigError(
                f"{flag} is for evaluating a policy, but --model {request.model} is a reward model "
                f"(sequence classifier); drop {flag}",
                where=flag,
            )
    judge = reward_model_judge(registry, model, request.batch_size, request.max_length, request.trust_remote_code)
    data = _load(request, registry, [Shape.PREFERENCE])
    prompts, chosen, rejected = data.prompts, [r["chosen"] for r in data.records], [r["rejected"] for r in data.records]
    n = len(prompts)
    log(f"scoring {n} preference pairs with {model.name}")
    scores = judge.score(prompts + prompts, chosen + rejected)
    chosen_scores, rejected_scores = scores[:n], scores[n:]
    report = _report("reward_model", request, data)
    report.pairs = n
    report.judge = judge.description
    report.set_pairwise("accuracy", "accuracy_ci95", "accuracy_ties", pairwise(chosen_scores, rejected_scores))
    report.metrics["mean_margin"] = mean([c - r for c, r in zip(chosen_scores, rejected_scores)])
    report.set_pairwise(
        "length_baseline_accuracy",
        "length_baseline_ci95",
        "length_baseline_ties",
        length_baseline([c[-1]["content"] for c in chosen], [r[-1]["content"] for r in rejected]),
    )
    return report


# --------------------------------------------------------------------------------------------------
# Policy


@dataclass
class PolicyInputs:
    """Everything checked and prepared before the first model loads."""

    policy: ModelRef
    reference: ModelRef | None
    judge: Judge | None
    data: EvalData
    tokenizer: Any
    prompts: list[list[Message]]  # unique prompts, in data order
    prompt_ids: list[list[int]]
    pair_examples: list[tuple[list[int], list[int]]]  # chosen completions, then rejected ones
    columns: dict[str, list[Any]] = field(default_factory=dict)  # the prompt rows' extra fields (e.g. answer)


def _unique_prompts(prompts: list[list[Message]]) -> list[list[Message]]:
    seen: dict[str, list[Message]] = {}
    for prompt in prompts:
        seen.setdefault(json.dumps(prompt, sort_keys=True), prompt)
    return list(seen.values())


def _prompt_columns(records: list[dict[str, Any]], prompts: list[list[Message]]) -> dict[str, list[Any]]:
    """The extra fields of prompt rows (an ``answer`` for the ``match`` reward), one value per unique prompt."""
    first: dict[str, dict[str, Any]] = {}
    for record in records:
        first.setdefault(json.dumps(record["prompt"], sort_keys=True), record)
    keys = sorted({k for r in first.values() for k in r if k != "prompt"})
    rows = [first[json.dumps(p, sort_keys=True)] for p in prompts]
    return {k: [row.get(k) for row in rows] for k in keys}


def prepare_policy(request: EvalRequest, registry: Registry, policy: ModelRef) -> PolicyInputs:
    """Check the reference and the reward, load the data and tokenize it; no model loads here."""
    if request.max_new_tokens >= request.max_length:
        raise ConfigError(
            f"--max-new-tokens ({request.max_new_tokens}) leaves no room for the prompt in "
            f"--max-length ({request.max_length}); raise --max-length",
            where="--max-new-tokens",
        )
    reference = None
    if request.reference:
        reference = inspect_model(request.reference, "--reference", request.trust_remote_code)
        require_kind(reference, "causal_lm", "a causal LM (the policy's starting point)")
    if request.reward_model and request.reward:
        raise one_reward_error(2, "easyrlhf eval", given="--reward-model and --reward are both given", where="--reward")
    if request.reward_options and not request.reward:
        raise ConfigError("--reward-option needs --reward NAME", where="--reward-option")
    judge = None
    if request.reward_model:
        rm = inspect_model(request.reward_model, "--reward-model", request.trust_remote_code)
        require_kind(
            rm, "reward_model", "a reward model (a one-label sequence classifier, e.g. from `easyrlhf run --method rm`)"
        )
        judge = reward_model_judge(registry, rm, request.batch_size, request.max_length, request.trust_remote_code)
    elif request.reward:
        judge = named_judge(registry, request.reward, request.reward_options)
    shape = pick_shape(registry, request.dataset, [Shape.PREFERENCE, Shape.PROMPT])
    if reference is None and judge is None and shape != Shape.PREFERENCE:
        raise ConfigError(
            f"nothing to measure: dataset '{request.dataset}' gives prompts only, so a policy needs "
            "--reference DIR (KL) and/or a reward, --reward-model DIR or --reward NAME (reward "
            "scores, win rate)",
            where="--reference",
        )
    data = load_eval_data(
        registry, request.dataset, shape, request.data_files, request.split, request.limit, request.seed
    )
    tokenizer = load_ref_tokenizer(policy, request.trust_remote_code)
    if reference is not None:
        ref_tokenizer = load_ref_tokenizer(reference, request.trust_remote_code)
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise EasyRLHFError(
                "the reference's tokenizer differs from the policy's; log-prob margins and KL "
                "compare the same tokens, so give the policy's starting model",
                where=reference.name,
            )
    prompts = _unique_prompts(data.prompts)
    pair_examples: list[tuple[list[int], list[int]]] = []
    if data.shape == Shape.PREFERENCE:
        for side in ("chosen", "rejected"):
            pair_examples += [chat.split_completion(tokenizer, r["prompt"], r[side]) for r in data.records]
    columns = _prompt_columns(data.records, prompts) if data.shape == Shape.PROMPT else {}
    return PolicyInputs(
        policy=policy,
        reference=reference,
        judge=judge,
        data=data,
        tokenizer=tokenizer,
        prompts=prompts,
        prompt_ids=[chat.prompt_ids(tokenizer, p) for p in prompts],
        pair_examples=pair_examples,
        columns=columns,
    )


@dataclass
class ModelOutputs:
    """What one causal LM produced: completion log-probs on the pairs and on the policy's samples, answers."""

    pair_logps: list[CompletionLogProb] = field(default_factory=list)
    sample_logps: list[CompletionLogProb] = field(default_factory=list)
    greedy: list[Answer] = field(default_factory=list)
    sampled: list[Answer] = field(default_factory=list)


def run_model(
    ref: ModelRef,
    inputs: PolicyInputs,
    request: EvalRequest,
    log: Log,
    *,
    greedy: bool,
    sample: bool,
    samples_to_score: list[Answer],
) -> ModelOutputs:
    """Load one causal LM, compute what is asked, free it."""
    tokenizer, pad = inputs.tokenizer, inputs.tokenizer.pad_token_id
    size = request.batch_size
    log(f"loading {ref.flag} {ref.name}")
    model = load_ref_policy(ref, request.trust_remote_code)
    out = ModelOutputs()
    if inputs.pair_examples:
        log(f"{ref.flag}: log-probs of {len(inputs.pair_examples)} chosen/rejected completions")
        out.pair_logps = completion_logprobs(model, inputs.pair_examples, pad, size, request.max_length)
    if greedy or sample:
        engine = answer_engine(model, tokenizer, ref.path, request.rollout_engine, request.seed, request.max_length)
        answers = functools.partial(
            generate_answers, model, tokenizer, inputs.prompt_ids, request.max_new_tokens, size,
            max_length=request.max_length, engine=engine,
        )  # fmt: skip
        if greedy:
            log(f"{ref.flag}: greedy answers to {len(inputs.prompts)} prompts")
            out.greedy = answers(sample=False)
        if sample:
            log(f"{ref.flag}: sampled answers to {len(inputs.prompts)} prompts")
            out.sampled = answers(sample=True, seed=request.seed)
            samples_to_score = out.sampled
        engine.close()
    if samples_to_score and inputs.reference is not None:
        examples = [(a.prompt_ids, a.completion_ids) for a in samples_to_score]
        log(f"{ref.flag}: log-probs of {len(examples)} sampled answers")
        out.sample_logps = completion_logprobs(model, examples, pad, size, request.max_length)
    del model  # free it before the next model loads
    return out


def evaluate_policy(request: EvalRequest, registry: Registry, policy: ModelRef, log: Log) -> EvalReport:
    """Implicit-reward accuracy and KL (with a reference); reward scores and win rate (with a reward)."""
    inputs = prepare_policy(request, registry, policy)
    judge, reference = inputs.judge, inputs.reference
    sample = request.sample and (judge is not None or reference is not None)
    mine = run_model(policy, inputs, request, log, greedy=judge is not None, sample=sample, samples_to_score=[])
    theirs = ModelOutputs()
    if reference is not None:
        theirs = run_model(
            reference, inputs, request, log, greedy=judge is not None, sample=False, samples_to_score=mine.sampled
        )

    report = _report("policy", request, inputs.data)
    report.reference, report.judge = request.reference, judge.description if judge else None
    report.pairs = len(inputs.data.records) if inputs.data.shape == Shape.PREFERENCE else 0
    report.prompts = len(inputs.prompts) if (mine.greedy or mine.sampled) else 0
    metrics = report.metrics
    if mine.pair_logps:
        n = len(mine.pair_logps) // 2
        gaps = pair_gaps(mine.pair_logps)
        report.set_pairwise("logprob_accuracy", "logprob_ci95", "logprob_ties", pairwise(gaps, [0.0] * n))
        metrics["logprob_mean_margin"] = mean(gaps)
        _note_truncation(
            report, "chosen/rejected completions", truncated_count(inputs.pair_examples, request.max_length), request
        )
    if mine.pair_logps and theirs.pair_logps:
        margins = [a - b for a, b in zip(pair_margins(mine.pair_logps), pair_margins(theirs.pair_logps))]
        report.set_pairwise(
            "implicit_reward_accuracy", "implicit_reward_ci95", "implicit_reward_ties", pairwise(margins, [0.0] * n)
        )
        metrics["implicit_reward_mean_margin"] = mean(margins)
    if mine.sample_logps:
        diffs = [p.total - r.total for p, r in zip(mine.sample_logps, theirs.sample_logps)]
        tokens = sum(p.tokens for p in mine.sample_logps)
        metrics["kl_per_token"] = sum(diffs) / tokens if tokens else 0.0
        metrics["kl_per_sequence"] = mean(diffs)
    for key, answers in (("greedy_tokens_mean", mine.greedy), ("sampled_tokens_mean", mine.sampled)):
        if answers:
            metrics[key] = mean([float(len(a.completion_ids)) for a in answers])
            unfinished = sum(1 for a in answers if not a.finished)
            if unfinished:
                report.notes.append(
                    f"{unfinished} of {len(answers)} {key.split('_')[0]} answers hit "
                    f"--max-new-tokens {request.max_new_tokens} before an end-of-turn"
                )
    prompt_room = request.max_length - request.max_new_tokens
    _note_truncation(
        report,
        "prompts for generation",
        sum(1 for p in inputs.prompt_ids if len(p) > prompt_room) if (mine.greedy or mine.sampled) else 0,
        request,
    )
    if judge is not None:
        log(f"scoring answers with {judge.description}")

        def score(answers: list[Any]) -> list[float]:
            return judge.score(inputs.prompts, [chat.as_completion(a.text) for a in answers], inputs.columns)

        greedy_scores = score(mine.greedy)
        metrics["reward_greedy_mean"] = mean(greedy_scores)
        if mine.sampled:
            metrics["reward_sampled_mean"] = mean(score(mine.sampled))
        if theirs.greedy:
            reference_scores = score(theirs.greedy)
            metrics["reference_reward_greedy_mean"] = mean(reference_scores)
            report.set_pairwise("win_rate", "win_rate_ci95", "win_rate_ties", pairwise(greedy_scores, reference_scores))
    _explain_skips(report, request, inputs)
    return report


def _note_truncation(report: EvalReport, what: str, count: int, request: EvalRequest) -> None:
    if count:
        report.notes.append(
            f"{count} {what} were longer than --max-length {request.max_length}; their oldest "
            f"prompt tokens were dropped"
        )


def _explain_skips(report: EvalReport, request: EvalRequest, inputs: PolicyInputs) -> None:
    if inputs.reference is None:
        report.skip(
            (
                "implicit_reward_accuracy",
                "implicit_reward_ci95",
                "implicit_reward_ties",
                "implicit_reward_mean_margin",
                "reference_reward_greedy_mean",
                "win_rate",
                "win_rate_ci95",
                "win_rate_ties",
                "kl_per_token",
                "kl_per_sequence",
            ),
            "no --reference given",
        )
    if inputs.judge is None:
        report.skip(
            (
                "reward_greedy_mean",
                "reward_sampled_mean",
                "reference_reward_greedy_mean",
                "win_rate",
                "win_rate_ci95",
                "win_rate_ties",
                "greedy_tokens_mean",
            ),
            "no reward given (--reward-model DIR or --reward NAME)",
        )
    if not request.sample:
        report.skip(
            ("reward_sampled_mean", "kl_per_token", "kl_per_sequence", "sampled_tokens_mean"), "--no-sample given"
        )
    if inputs.data.shape != Shape.PREFERENCE:
        report.skip(
            (
                "logprob_accuracy",
                "logprob_ci95",
                "logprob_ties",
                "logprob_mean_margin",
                "implicit_reward_accuracy",
                "implicit_reward_ci95",
                "implicit_reward_ties",
                "implicit_reward_mean_margin",
            ),
            f"dataset '{request.dataset}' gives prompts, not preference pairs",
        )
