"""A prototype of the fix suggested for stepstream.hub (not used by stepstream itself).

`Hub._select` filters and merges a batch of events for each connection on its own, so one wake
costs O(events x connections): at 500 clients the event loop spends most of its time there (see
docs/benchmarks.md). Connections woken together read the same batch with the same request
shape, so the selection can be computed once and shared. Run it with
`python bench/serve.py --app stepstream-shared`.
"""

from __future__ import annotations

from stepstream.hub import Hub, StreamRequest
from stepstream.state import Event


class SharedSelectHub(Hub):
    """`Hub` whose `_select` result is reused by every connection reading the same batch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last_key: tuple | None = None
        self._last_result: tuple[list[Event], bool] = ([], False)

    def _select(self, events: list[Event], request: StreamRequest) -> tuple[list[Event], bool]:
        key = (events[0].seq, events[-1].seq, request.manager_id, request.children) if events else None
        if key is not None and key == self._last_key:
            return self._last_result
        result = super()._select(events, request)
        self._last_key, self._last_result = key, result
        return result
