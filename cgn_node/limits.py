"""Request-body limits: the node's own (``max_work_body_bytes``), the account's (Central's
word at login, carried in the session token) and the DService's (its descriptor's
``[limits] max_body_bytes``, announced in miners' offers). The smallest binds; a body over it
is refused before it is read, with BODY_TOO_LARGE naming the size, the limit and whose it is.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Mapping
from typing import Literal

from cgn_common.errors import BodyTooLargeError
from cgn_node.sessions import SessionClaims

#: Whose limit binds a request's body.
Binding = Literal["node", "account", "dservice"]


def body_limit(node_max: int, claims: SessionClaims, dservice_limit: int) -> tuple[int, Binding]:
    """The request-body limit for ``claims``' account on a DService whose miners offer
    ``dservice_limit`` (0: none), and whose it is. On a tie the node's binds, then the
    account's."""
    limit: int = node_max
    binding: Binding = "node"
    if 0 < claims.max_body_bytes < limit:
        limit, binding = claims.max_body_bytes, "account"
    if 0 < dservice_limit < limit:
        limit, binding = dservice_limit, "dservice"
    return limit, binding


def check_body_size(
    size: int, node_max: int, claims: SessionClaims, dservice: str, dservice_limit: int
) -> None:
    """Raises BodyTooLargeError (RESOURCE_EXHAUSTED, BODY_TOO_LARGE) when a body of ``size``
    bytes for ``dservice`` is over the limit that binds (:func:`body_limit`)."""
    limit, binding = body_limit(node_max, claims, dservice_limit)
    if size > limit:
        raise too_large(size, limit, binding, dservice)


def too_large(size: int, limit: int, binding: Binding, dservice: str) -> BodyTooLargeError:
    """The refusal of a body of ``size`` bytes over ``limit`` (``binding``'s)."""
    whose = {
        "node": "this node's limit",
        "account": "the account's limit",
        "dservice": f"the limit of DService {dservice!r}",
    }[binding]
    return BodyTooLargeError(
        f"the request body is {size} bytes, over {whose} of {limit} bytes ({binding})"
    )


class DServiceLimits:
    """The body limits connected miners offer, per DService: a DService's limit is the
    smallest nonzero one among the miners offering it now (so no miner that may get the work
    is sent a body its DService refuses; 0 when none offers a limit).

    Looking a limit up is one dict read; offers and withdrawals cost O(distinct limits).
    """

    def __init__(self) -> None:
        #: miner -> its offers' nonzero limits, by DService.
        self._offers: dict[Hashable, dict[str, int]] = {}
        #: DService -> how many connected miners offer each limit.
        self._counts: dict[str, collections.Counter[int]] = {}
        #: DService -> the smallest limit offered now.
        self._smallest: dict[str, int] = {}

    def offered(self, miner: Hashable, limits: Mapping[str, int]) -> None:
        """``miner`` connected offering these DServices with these limits (0: none)."""
        self.withdrawn(miner)
        own = {name: limit for name, limit in limits.items() if limit > 0}
        self._offers[miner] = own
        for name, limit in own.items():
            self._counts.setdefault(name, collections.Counter())[limit] += 1
            self._update(name)

    def withdrawn(self, miner: Hashable) -> None:
        """``miner`` left: its offers no longer count."""
        for name, limit in self._offers.pop(miner, {}).items():
            counts = self._counts[name]
            counts[limit] -= 1
            if not counts[limit]:
                del counts[limit]
            self._update(name)

    def _update(self, name: str) -> None:
        counts = self._counts.get(name)
        if counts:
            self._smallest[name] = min(counts)
        else:
            self._counts.pop(name, None)
            self._smallest.pop(name, None)

    def limit(self, dservice: str) -> int:
        """The DService's body limit in bytes; 0: no connected miner offers one."""
        return self._smallest.get(dservice, 0)
