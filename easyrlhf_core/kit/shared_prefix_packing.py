"""Shared-prefix packing: the rows of a pairwise or ranked batch, each group's common prefix once.

A preference pair is two rows, ``prompt + chosen`` and ``prompt + rejected``; RRHF has k rows per prompt.
:func:`pack_groups` turns such a right-padded batch into a few packed rows: per group, the longest common
prefix of its rows (the prompt, and any identical start of the responses) once, then each row's own tail,
several groups per packed row up to a token budget, no padding between them. Position ids continue from
the prefix for every tail, and :func:`block_attention_mask` lets a token see its own group's prefix and
its own tail only, so every row's hidden states are those of the row run alone.

``token_index[row, t]`` (``-1`` past the row's length) is where token ``t`` of the original row sits in
the flattened packed batch: gather hidden states with it and any per-token readout of the padded layout
(log-probs at completion tokens, a reward at the last token) comes out unchanged, computed on fewer tokens.

:class:`SharedPrefixCollator` adds the packed batch under ``"shared_prefix"`` to what another collator
returns; :func:`easyrlhf_core.kit.shared_prefix_forward.enable_shared_prefix` makes a model read it.
Importing this module is cheap: torch loads when a function runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "PREFIX_SHARING_HELP",
    "ROW_TOKENS",
    "SHARED_PREFIX_KEY",
    "PackedGroup",
    "SharedPrefixCollator",
    "block_attention_mask",
    "common_prefix_length",
    "pack_groups",
    "pack_prompt_groups",
    "pack_rows",
    "pair_groups",
    "prompt_groups",
    "query_groups",
]

#: The help text of the ``prefix_sharing`` option of every method that has one.
PREFIX_SHARING_HELP = (
    "Run each prompt once for all of its responses (shared-prefix forward: one sequence per "
    "example with a block attention mask), pack examples without padding and run the LM head "
    "only on the tokens a loss reads; same results, less time and memory. false: padded rows, "
    "one per response. Models whose attention takes no such mask fall back by themselves."
)

#: Default packed-row length: a batch's groups share one row up to this many tokens (fewer padding slots;
#: the block mask is ``ROW_TOKENS**2`` booleans per row, and masked attention costs grow with the row length).
ROW_TOKENS = 2048

#: The batch key under which :class:`SharedPrefixCollator` puts the packed batch.
SHARED_PREFIX_KEY = "shared_prefix"


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares (all of the shortest when it is a prefix of the rest)."""
    if not sequences:
        return 0
    shortest = min(len(s) for s in sequences)
    first = sequences[0]
    for t in range(shortest):
        token = first[t]
        if any(s[t] != token for s in sequences[1:]):
            return t
    return shortest


@dataclass
class PackedGroup:
    """One group laid out as prefix then tails: its tokens, position ids, branch ids (0 on the prefix,
    ``b + 1`` on member ``b``'s tail) and, per member row, the offsets of that row's tokens in the layout."""

    tokens: list[int]
    positions: list[int]
    branches: list[int]
    offsets: dict[int, list[int]]

    @classmethod
    def of(cls, rows: dict[int, list[int]]) -> PackedGroup:
        """The layout of ``rows`` (row index -> tokens) around their longest common prefix."""
        sequences = list(rows.values())
        shared = common_prefix_length(sequences)
        tokens = list(sequences[0][:shared])
        positions = list(range(shared))
        branches = [0] * shared
        offsets: dict[int, list[int]] = {}
        for branch, (row, sequence) in enumerate(rows.items(), start=1):
            tail = sequence[shared:]
            start = len(tokens)
            offsets[row] = list(range(shared)) + list(range(start, start + len(tail)))
            tokens += tail
            positions += range(shared, shared + len(tail))
            branches += [branch] * len(tail)
        return cls(tokens, positions, branches, offsets)


def pair_groups(num_rows: int) -> list[list[int]]:
    """Rows ``[chosen_0..chosen_{n-1}, rejected_0..rejected_{n-1}]`` (TRL's pairwise layout) as n pairs."""
    if num_rows % 2:
        raise ValueError(f"a pairwise batch has an even number of rows, got {num_rows}")
    half = num_rows // 2
    return [[i, i + half] for i in range(half)]


def query_groups(query_index: Sequence[int]) -> list[list[int]]:
    """Rows grouped by their query (``query_index[row]``), in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for row, query in enumerate(query_index):
        groups.setdefault(int(query), []).append(row)
    return list(groups.values())


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
    """Rows grouped by their prompt (the same tokens under the same mask, so the same padding too), in order
    of first appearance: the completions TRL's online trainers sample for one prompt."""
    import torch

    masked = (prompt_ids * prompt_mask).tolist()
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for row, (ids, mask) in enumerate(zip(masked, torch.as_tensor(prompt_mask).tolist())):
        groups.setdefault((tuple(ids), tuple(mask)), []).append(row)
    return list(groups.values())


def _first_fit(sizes: list[int], capacity: int) -> list[list[int]]:
    """Item indices per bin: first-fit decreasing (an item larger than ``capacity`` gets a bin of its own)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for item in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        for b, free in enumerate(room):
            if sizes[item] <= free:
                bins[b].append(item)
                room[b] -= sizes[item]
                break
        else:
            bins.append([item])
            room.append(capacity - sizes[item])
    return bins


def pack_groups(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    groups: list[list[int]],
    pad_token_id: int,
    budget: int | None = None,
) -> dict[str, torch.Tensor]:
    """The packed, shared-prefix form of a right-padded batch.

    ``groups`` partitions the rows (e.g. :func:`pair_groups`); each group is laid out once
    (:class:`PackedGroup`) and the groups are packed first-fit into rows of ``budget`` tokens (a group longer
    than ``budget`` gets a row of its own; default: the whole batch in one row, up to :data:`ROW_TOKENS` or the
    longest group). Returns ``input_ids``, ``position_ids``, ``segment_ids`` (-1 on padding), ``branch_ids``
    of shape ``[packed_rows, width]`` and ``token_index`` of the original shape (flat index into the packed
    batch, -1 past each row's length).
    """
    import torch

    lengths = attention_mask.sum(dim=1).tolist()
    rows = {r: input_ids[r, : lengths[r]].tolist() for r in range(input_ids.shape[0])}
    covered = sorted(r for g in groups for r in g)
    if covered != list(rows):
        raise ValueError(f"groups must cover each of the {len(rows)} rows exactly once, got {groups}")
    laid_out = [PackedGroup.of({r: rows[r] for r in g}) for g in groups]
    sizes = [len(g.tokens) for g in laid_out]
    capacity = budget if budget is not None else max([input_ids.shape[1], *sizes, min(sum(sizes), ROW_TOKENS)])
    bins = _first_fit(sizes, capacity)
    width = max(sum(sizes[i] for i in b) for b in bins)

    shape = (len(bins), width)
    packed_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.full(shape, -1, dtype=torch.long)
    branch_ids = torch.zeros(shape, dtype=torch.long)
    token_index = torch.full(tuple(input_ids.shape), -1, dtype=torch.long)
    for packed_row, members in enumerate(bins):
        start = 0
        for segment, item in enumerate(members):
            group = laid_out[item]
            span = slice(start, start + len(group.tokens))
            packed_ids[packed_row, span] = torch.tensor(group.tokens, dtype=torch.long)
            position_ids[packed_row, span] = torch.tensor(group.positions, dtype=torch.long)
            segment_ids[packed_row, span] = segment
            branch_ids[packed_row, span] = torch.tensor(group.branches, dtype=torch.long)
            base = packed_row * width + start
            for row, offsets in group.offsets.items():
                token_index[row, : len(offsets)] = torch.tensor(offsets, dtype=torch.long) + base
            start += len(group.tokens)
    return {
        "input_ids": packed_ids,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "branch_ids": branch_ids,
        "token_index": token_index,
    }


def pack_rows(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int, budget: int | None = None
) -> dict[str, torch.Tensor]:
    """Each row's real tokens (where ``attention_mask`` is 1, left or right padded, or both) packed first-fit
    into rows of ``budget`` tokens (default: twice the longest row: little room left over at the rows' ends,
    while a packed row's attention, quadratic in its length, stays near a padded row's), no padding between
    them: :func:`pack_groups` with a group per row, nothing shared.

    ``token_index`` has the shape of ``input_ids``: the flat index in the packed batch of each real token of
    the original layout, -1 on its padding.
    """
    import torch

    keep = attention_mask.bool()
    lengths = keep.sum(dim=1)
    width = int(lengths.max()) if len(lengths) else 0
    compact = torch.full((input_ids.shape[0], max(width, 1)), pad_token_id, dtype=torch.long)
    compact_mask = torch.arange(compact.shape[1]).unsqueeze(0) < lengths.cpu().unsqueeze(1)
    compact[compact_mask] = input_ids.cpu()[keep.cpu()]
    packed = pack_groups(
        compact, compact_mask.long(), [[r] for r in range(input_ids.shape[0])], pad_token_id, budget or 2 * width
    )
    token_index = torch.full(tuple(input_ids.shape), -1, dtype=torch.long)
    token_index[keep.cpu()] = packed["token_index"][compact_mask]
    packed["token_index"] = token_index
    return {key: value.to(input_ids.device) for key, value in packed.items()}


def pack_prompt_groups(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    groups: list[list[int]],
    pad_token_id: int,
    budget: int | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`pack_groups` for TRL's online rows ``[left padding | prompt | completion | right padding]``:
    each row's real tokens are one run anywhere in the row, and a group's rows (e.g. :func:`prompt_groups`)
    start at the same column. Position ids are the columns of the padded row, as the model's own forward
    numbers a padded row when given none (transformers counts from column 0, padding included), so the
    packed forward reproduces that forward's log-probs exactly; ``token_index`` has the shape of
    ``input_ids`` (-1 on padding). ``budget`` defaults to the longest group's layout: a packed row about one
    group long (masked attention costs grow with the square of a packed row's length)."""
    import torch

    keep = attention_mask.bool().cpu()
    lengths = keep.sum(dim=1)
    first = keep.int().argmax(dim=1)
    last = keep.shape[1] - 1 - keep.flip(1).int().argmax(dim=1)
    if bool(((last - first + 1 != lengths) & (lengths > 0)).any()):
        raise ValueError("each row's real tokens must be one run (left and right padding only)")
    for group in groups:
        if len({int(first[r]) for r in group}) > 1:
            raise ValueError(f"the rows of a group must start at the same column, got {group}")
    width = max(int(lengths.max()) if len(lengths) else 0, 1)
    compact_mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    compact = torch.full((input_ids.shape[0], width), pad_token_id, dtype=torch.long)
    compact[compact_mask] = input_ids.cpu()[keep]
    if budget is None:
        rows = [compact[r, : int(lengths[r])].tolist() for r in range(compact.shape[0])]
        budget = max(len(PackedGroup.of({r: rows[r] for r in g}).tokens) for g in groups) if groups else width
    packed = pack_groups(compact, compact_mask.long(), groups, pad_token_id, budget)
    index = packed["token_index"]
    columns = first.unsqueeze(1) + torch.arange(width).unsqueeze(0)
    packed["position_ids"].view(-1)[index[compact_mask]] = columns[compact_mask]
    token_index = torch.full(tuple(input_ids.shape), -1, dtype=torch.long)
    token_index[keep] = index[compact_mask]
    packed["token_index"] = token_index
    return {key: value.to(input_ids.device) for key, value in packed.items()}


def block_attention_mask(segment_ids: torch.Tensor, branch_ids: torch.Tensor) -> torch.Tensor:
    """``[rows, 1, width, width]`` boolean mask, True where query i may attend key j: same group, j <= i,
    and j on the prefix or on i's own tail. A padding position attends to itself only (no empty rows)."""
    import torch

    width = segment_ids.shape[1]
    positions = torch.arange(width, device=segment_ids.device)
    causal = positions.unsqueeze(1) >= positions.unsqueeze(0)
    same_group = (segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)) & (segment_ids >= 0).unsqueeze(2)
    branch_q, branch_k = branch_ids.unsqueeze(2), branch_ids.unsqueeze(1)
    visible_branch = (branch_k == 0) | (branch_k == branch_q)
    diagonal = torch.eye(width, dtype=torch.bool, device=segment_ids.device)
    return ((same_group & causal & visible_branch) | diagonal).unsqueeze(1)


Grouping = Callable[[dict[str, Any]], list[list[int]]]


def _pairs(batch: dict[str, Any]) -> list[list[int]]:
    return pair_groups(batch["input_ids"].shape[0])


def _queries(batch: dict[str, Any]) -> list[list[int]]:
    return query_groups(batch["query_index"].tolist())


@dataclass
class SharedPrefixCollator:
    """Wraps a collator of right-padded rows (``input_ids``, ``attention_mask``) and adds the packed batch
    under :data:`SHARED_PREFIX_KEY`; everything the inner collator returns is kept, so a loss that reads the
    padded layout (labels, completion masks) still can. ``grouping``: ``"pairs"`` (TRL's [chosen...,
    rejected...] rows), ``"queries"`` (by a ``query_index`` row field) or a function of the batch."""

    collator: Callable[[list[Any]], dict[str, Any]]
    pad_token_id: int
    grouping: str | Grouping = "pairs"
    budget: int | None = None
    enabled: bool = True

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        batch = self.collator(features)
        if not self.enabled:
            return batch
        group = {"pairs": _pairs, "queries": _queries}.get(self.grouping, self.grouping)  # type: ignore[arg-type]
        batch[SHARED_PREFIX_KEY] = pack_groups(
            batch["input_ids"], batch["attention_mask"], group(batch), self.pad_token_id, self.budget
        )
        return batch
