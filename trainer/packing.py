"""SFT sequence packing without cross-document attention.

Padding a batch of chat records to its longest row wastes the compute of every pad token; packing
concatenates records into rows of up to `max_length` tokens instead. Done naively that lets each
record attend to the records packed before it and predicts the first token of a record from the
end of the previous one. Here it is exact:

- each record keeps its own position ids (0, 1, 2, ... restarting per record), so rotary
  embeddings see the same positions as in an unpacked row;
- attention is block-diagonal causal: a token sees only the earlier tokens of its own record
  (a 4D mask, which SDPA and eager attention take on CPU and GPU alike);
- the first token of every record is labelled -100, so no target crosses a record boundary; the
  model's label shift then gives exactly the targets the unpacked rows have.

So a packed micro-batch has the same loss (sum over target tokens / their count) and the same
per-record logits as the padded one; `tests/trainer/test_packing.py` checks both. Packing happens
*within* a micro-batch: the records of each optimizer step are the same as without packing, only
the padding goes, so the schedule, the step count and the gradients do not change.

With `attn_implementation="flash_attention_2"` (or 3), no mask is built: transformers derives the
varlen cumulative sequence lengths from the restarting position ids, which is the fastest path on
a GPU with flash-attn installed.
"""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE = -100  # the label value the loss skips
# Attention implementations that read document boundaries from position_ids alone (varlen kernels).
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def plan_rows(lengths: Sequence[int], *, max_length: int) -> list[list[int]]:
    """Group record indices into rows of at most max_length tokens: first-fit decreasing, which
    is within 22% of the fewest possible rows and deterministic for the same lengths."""
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        raise ValueError(f"record {too_long[0]} has {lengths[too_long[0]]} tokens, more than max_length {max_length}: truncate before packing")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_length - lengths[i])
    return [sorted(r) for r in rows]  # records in their original order inside a row


def document_ids(row_lengths: Sequence[Sequence[int]], *, width: int) -> torch.Tensor:
    """(rows, width) int tensor: the record number of each position within its row, -1 for padding."""
    ids = torch.full((len(row_lengths), width), -1, dtype=torch.long)
    for r, lengths in enumerate(row_lengths):
        start = 0
        for d, n in enumerate(lengths):
            ids[r, start : start + n] = d
            start += n
    return ids


def block_causal_mask(doc_ids: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(rows, 1, T, T) mask: query i may see key j when j <= i and both are in the same record.

    dtype None gives a boolean mask (True = attend; what SDPA takes). A float dtype gives the
    additive form (0 = attend, the dtype's minimum = blocked) that eager attention adds to its
    scores. Padding positions see only themselves, so their softmax never divides by zero
    (a NaN there would poison the backward pass even though their loss is masked).
    """
    t = doc_ids.shape[1]
    causal = torch.ones((t, t), dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    allowed = same & causal & (doc_ids[:, :, None] >= 0)
    allowed |= torch.eye(t, dtype=torch.bool, device=doc_ids.device)  # padding rows: self only
    allowed = allowed[:, None, :, :]
    if dtype is None:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype, device=doc_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def pack_batch(
    seqs: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    max_length: int,
    pad_id: int,
    attn_implementation: str = "sdpa",
    mask_dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """One packed micro-batch of these records: input_ids, labels, position_ids, attention_mask.

    Rows are padded to the longest packed row (not to max_length). `mask_dtype` only matters for
    eager attention, which adds the mask to its scores in that dtype.
    """
    rows = plan_rows([len(s) for s in seqs], max_length=max_length)
    width = max(sum(len(seqs[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(seqs[i])
            ids[r, start : start + n] = torch.tensor(seqs[i], dtype=torch.long)
            lab[r, start : start + n] = torch.tensor(labels[i], dtype=torch.long)
            lab[r, start] = IGNORE  # the previous record's last token must not predict this one
            pos[r, start : start + n] = torch.arange(n)
            start += n
    batch = {"input_ids": ids, "labels": lab, "position_ids": pos}
    if attn_implementation not in VARLEN_ATTENTION:
        docs = document_ids([[len(seqs[i]) for i in row] for row in rows], width=width)
        batch["attention_mask"] = block_causal_mask(docs, dtype=None if attn_implementation != "eager" else mask_dtype)
    return batch


def padding_share(seqs: Sequence[Sequence[int]], *, max_length: int) -> tuple[float, float]:
    """Share of pad tokens (padded to the longest record, packed) for the same records: the
    compute that packing saves, for logs and benchmarks."""
    lengths = [len(s) for s in seqs]
    real = sum(lengths)
    padded = len(lengths) * max(lengths)
    rows = plan_rows(lengths, max_length=max_length)
    packed = len(rows) * max(sum(lengths[i] for i in r) for r in rows)
    return 1 - real / padded, 1 - real / packed
