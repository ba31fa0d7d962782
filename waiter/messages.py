"""Waiter's words for why a service cannot start (docs/api.md §6): the lifecycle's judgement and the schedulers
that judge for themselves (Kubernetes' pod states) say the same thing."""

MESSAGES = {
    "not-enough-memory": "Not enough memory allocated",
    "bad-startup-command": "Invalid startup command",
    "cannot-connect": "Unable to connect to run health checks",
    "health-check-timed-out": "Health check timed out",
    "invalid-health-check-response": "Health check returned an invalid response",
}
