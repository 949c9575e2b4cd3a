"""The loop the built-in dataset plugins share: read each source's rows, turn each into a record (or a
counted drop) and route bad rows through ``options.bad_rows``; the framework then splits and limits
(:func:`easyrlhf_core.kit.data_loading.load_dataset`)."""

from __future__ import annotations

from typing import Any, Callable

from easyrlhf_core.kit.rows import RowProblem
from easyrlhf_core.kit.shapes import DataOptions, DataSplits, Record

from .sources import EVAL, Source, has_explicit_eval

#: ``row -> record``, or ``None`` when the row is dropped on purpose (the parser counts why).
RowParser = Callable[[Any], "Record | None"]


def collect(
    sources: list[Source], parse: RowParser, options: DataOptions, notes: Callable[[int], list[str]]
) -> DataSplits:
    """Records of ``options.shape`` from ``sources`` (``eval``: the sources' own eval split, else empty).
    ``notes(rows_read)`` gives the plugin's run notes."""
    bad = options.bad_rows
    explicit_eval = has_explicit_eval(sources)
    train: list[Record] = []
    eval_: list[Record] = []
    rows_read = 0
    for source in sources:
        target = eval_ if explicit_eval and source.split == EVAL else train
        for line, row in source.rows(bad):
            rows_read += 1
            try:
                record = parse(row)
            except RowProblem as problem:
                bad.report(problem, file=source.name, line=line)
                continue
            if record is not None:
                target.append(record)
    return DataSplits(options.shape, train, eval_ if explicit_eval else [], notes(rows_read))
