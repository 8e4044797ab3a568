"""Reply triage: which training replies are aggregated, which are rejected, who failed, and
the responders' weights after non-response."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Message

from .node_registry import NodeRegistry
from .plan import RoundPlan
from .reply_validation import ValidReply, all_finite, nonfinite_reason, validate_train_reply
from .responder_weights import responder_weights

log = logging.getLogger("flwr").log


@dataclass(frozen=True)
class ReplyProblem:
    """A node whose reply was rejected or that failed, and why."""

    node: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        """``{"node": ..., "reason": ...}``."""
        return {"node": self.node, "reason": self.reason}


@dataclass(frozen=True)
class Triage:
    """Accepted replies (one per node, in arrival order), rejected replies (invalid, not
    selected, duplicates) and failures (error replies, no reply)."""

    valid: list[ValidReply]
    rejected: list[ReplyProblem]
    failures: list[ReplyProblem]


def triage_replies(
    replies: Iterable[Message],
    plan: RoundPlan,
    weighted_by_key: str,
    registry: NodeRegistry | None = None,
    check_finite: bool = True,
) -> Triage:
    """Sort the round's replies (see :func:`validate_train_reply` for the checks).

    With ``registry``, a reply whose weight metric disagrees with the node's learned size
    (:meth:`NodeRegistry.claim_problem`) is rejected too.

    An error reply is blamed on the node its instruction was sent to (``reply_to``): a
    SuperLink answers for an unreachable node with an error whose sender is itself. A selected
    node with neither an accepted nor a problem entry failed with "no reply".
    ``check_finite=False``: real floating arrays are left to the caller's NaN / Inf check
    (:func:`.reply_screen.screen_triage`, in its one pass over the updates).
    """
    valid: list[ValidReply] = []
    rejected: list[ReplyProblem] = []
    failures: list[ReplyProblem] = []
    seen: set[int] = set()
    selected = set(plan.selected)
    asked = {
        m.metadata.message_id: int(m.metadata.dst_node_id)
        for m in plan.messages
        if m.metadata.message_id
    }
    for reply in replies:
        result = validate_train_reply(
            reply, plan.signature, selected, weighted_by_key, base=plan.global_arrays,
            check_finite=check_finite,
        )
        node = int(reply.metadata.src_node_id)
        if reply.has_error():
            node = asked.get(reply.metadata.reply_to_message_id, node)
        if isinstance(result, str):
            (failures if reply.has_error() else rejected).append(ReplyProblem(node, result))
            log(WARNING, "aggregate_train: rejected reply of node %d: %s", node, result)
            continue
        if node in seen and not check_finite:  # NaN / Inf named first; an earlier one drops
            if (bad := _nonfinite(result)) is not None:
                _reject(rejected, node, bad)
                continue
            k = next((i for i, v in enumerate(valid) if v.node_id == node), None)
            if k is not None and (bad := _nonfinite(valid[k])) is not None:
                _reject(rejected, node, bad)
                seen.discard(node)
                del valid[k]
        if node in seen:
            rejected.append(ReplyProblem(node, "duplicate reply"))
            log(WARNING, "aggregate_train: rejected duplicate reply of node %d", node)
            continue
        claim = None if registry is None else registry.claim_problem(
            node, result.num_examples, weighted_by_key
        )
        if claim is not None and not check_finite:  # NaN / Inf is named before the claim
            if (bad := _nonfinite(result)) is not None:
                _reject(rejected, node, bad)
                continue
        seen.add(node)
        if claim is not None:
            _reject(rejected, node, claim)
            continue
        valid.append(result)
    for node in plan.selected:
        if node not in seen and not any(f.node == node for f in failures + rejected):
            failures.append(ReplyProblem(node, "no reply"))
    return Triage(valid, rejected, failures)


def _reject(rejected: list[ReplyProblem], node: int, reason: str) -> None:
    rejected.append(ReplyProblem(node, reason))
    log(WARNING, "aggregate_train: rejected reply of node %d: %s", node, reason)


def _nonfinite(reply: ValidReply) -> str | None:
    """The reason :func:`validate_train_reply` gives for the reply's first real floating array
    with NaN or Inf, or None."""
    bad = next((k for k, a in reply.arrays.items() if a.dtype.kind == "f" and not all_finite(a)),
               None)
    return None if bad is None else nonfinite_reason(bad)


def reply_weights(plan: RoundPlan, valid: list[ValidReply]) -> tuple[np.ndarray, list[str]]:
    """Aggregation weights of the accepted replies (aligned with ``valid``) after the
    non-response adjustment of :func:`responder_weights`, and its notes (logged). In a FedAvg
    round, nodes drawn before their size was known weigh by their claim
    (:class:`.weight_cap.FirstClaims`).

    Certainty units (``pi_i = 1``) exist only in without-replacement designs.
    """
    sel = plan.selection
    index = {node: k for k, node in enumerate(plan.selected)}
    responded = np.zeros(len(plan.selected), dtype=bool)
    for v in valid:
        responded[index[v.node_id]] = True
    if plan.draw.without_replacement:
        certainty = sel.inclusion >= 1.0 - 1e-12
    else:
        certainty = np.zeros(len(sel), dtype=bool)
    weights, notes = responder_weights(sel.weights, sel.strata, certainty, responded)
    for note in notes:
        log(INFO, "aggregate_train: %s", note)
    out = np.array([weights[index[v.node_id]] for v in valid], dtype=np.float64)
    if plan.first_claims is not None and valid:  # FedAvg round: unknown sizes as claimed
        total = float(out.sum())
        out *= plan.first_claims.factors([v.node_id for v in valid],
                                         [v.num_examples for v in valid])
        if out.sum() > 0:
            out *= total / float(out.sum())  # the same total: self-normalised anyway
    return out, notes
