"""Which settings the cached positions of a sequence were computed under, so that a cached prefix is reused only
where it was computed under the setting the new positions need (a KV cache computed under one steering setting
is wrong under another). The runtime's one sequence and the scheduler's slots keep one each."""

from __future__ import annotations

from dataclasses import dataclass

from ..setting import SteeringSetting


@dataclass(frozen=True)
class KvRecord:
    """Cached positions [0, split) were computed under `prompt`, positions from `split` on under `rest`."""

    prompt: SteeringSetting | None = None
    split: int = 0
    rest: SteeringSetting | None = None

    def reusable(self, needed: SteeringSetting, n_tokens: int) -> int:
        """How many cached positions were computed under `needed`."""
        if self.prompt is None or self.prompt != needed:
            return 0
        return n_tokens if self.rest == needed else min(n_tokens, self.split)
