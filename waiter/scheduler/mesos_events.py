"""The Mesos scheduler API's events that need no action from this framework: each is logged, and why nothing is
done is said next to it. The scheduler (``waiter.scheduler.mesos``) acts on SUBSCRIBED, OFFERS, UPDATE and
INVERSE_OFFERS and hands every other event here."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from waiter.scheduler.mesos_tasks import id_value

log = logging.getLogger(__name__)


def note_unacted(event: Mapping[str, Any]) -> None:
    kind = event["type"]
    if kind == "FAILURE":
        # An agent was removed or an executor ended. The master sends each affected task's status separately
        # (TASK_LOST, TASK_FAILED...), and those are what end instances; this event only names the cause.
        failure = event.get("failure") or {}
        log.warning(
            "Mesos reported a failure of agent %s, executor %s (status %s)",
            id_value(failure.get("agent_id")),
            id_value(failure.get("executor_id")),
            failure.get("status"),
        )
    elif kind == "RESCIND":
        # Offers are answered (accepted or declined) as they arrive and never kept, so none is held to forget;
        # a launch that raced the rescind comes back as TASK_LOST (REASON_INVALID_OFFERS) and is replaced.
        log.debug("Offer %s rescinded", id_value(event.get("rescind", {}).get("offer_id")))
    elif kind == "RESCIND_INVERSE_OFFER":
        # Inverse offers are accepted as they arrive (see MesosScheduler._on_inverse_offers): none is held to forget.
        log.debug(
            "Inverse offer %s rescinded", id_value(event.get("rescind_inverse_offer", {}).get("inverse_offer_id"))
        )
    elif kind == "MESSAGE":
        # Only custom executors send framework messages; instances run under the command executor.
        log.info(
            "Ignoring a framework message from executor %s", id_value(event.get("message", {}).get("executor_id"))
        )
    elif kind == "UPDATE_OPERATION_STATUS":
        # Only operations sent with an id get status updates that need acknowledging; LAUNCH is sent without
        # one, and task statuses (UPDATE) say what became of the tasks.
        status = event.get("update_operation_status", {}).get("status") or {}
        log.info("Ignoring operation status %s", status.get("state"))
    else:
        log.info("Ignoring a Mesos event of unknown type %s", kind)


__all__ = ["note_unacted"]
