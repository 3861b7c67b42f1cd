"""The demo agent ``callray up`` answers with when ``CALLRAY_AGENT`` is not set.

A small support desk: look up an order, book a callback, transfer to a person, hang up. The
lookups are deterministic so tests and load runs can rely on them.
"""

from __future__ import annotations

import hashlib

from services.agents.control import CallControl
from services.errors import ToolError
from services.realtime.agent import RealtimeAgent
from services.realtime.tools import ToolContext, function_tool

_STATUSES = ("is being packed", "has shipped", "is out for delivery", "was delivered")


@function_tool
def lookup_order(order_id: str) -> dict[str, str]:
    """Look up the status of an order.

    Args:
        order_id: The order number the caller gives, such as A1234.
    """
    order_id = order_id.strip().upper()
    if not order_id or not order_id[0].isalpha() or not order_id[1:].isdigit():
        raise ToolError("Order numbers are a letter followed by digits, such as A1234.")
    digest = hashlib.sha256(order_id.encode()).digest()
    return {"order_id": order_id, "message": f"{order_id} {_STATUSES[digest[0] % 4]}"}


@function_tool
def book_callback(phone_number: str, when: str) -> dict[str, str]:
    """Book a callback from a human agent.

    Args:
        phone_number: The number to call back, digits only.
        when: When the caller wants the callback, in their words.
    """
    digits = "".join(ch for ch in phone_number if ch.isdigit())
    if len(digits) < 7:
        raise ToolError("That phone number looks too short.")
    ref = hashlib.sha256(f"{digits}|{when}".encode()).hexdigest()[:6].upper()
    return {"message": f"callback booked for {when}, reference {ref}"}


def _control(ctx: ToolContext) -> CallControl:
    control = ctx.context
    if not isinstance(control, CallControl):
        raise ToolError("This call cannot be controlled from here.")
    return control


@function_tool(in_process=True)
def hang_up(ctx: ToolContext) -> str:
    """End the call after saying goodbye."""
    _control(ctx).hang_up("agent_hangup")
    return "The call will end now."


@function_tool(in_process=True)
def transfer_to_human(ctx: ToolContext, department: str) -> str:
    """Transfer the caller to a human agent.

    Args:
        department: Which team: sales, support or billing.
    """
    team = department.strip().lower()
    if team not in ("sales", "support", "billing"):
        raise ToolError("Departments are sales, support and billing.")
    _control(ctx).transfer(f"queue:{team}")
    return f"Transferring to {team}."


DEMO_AGENT = RealtimeAgent(
    name="Acme support",
    instructions=(
        "You are Acme's phone support agent. Be brief and friendly. Look up orders with "
        "lookup_order, book callbacks with book_callback, transfer to a person when asked, "
        "and hang up after saying goodbye."
    ),
    voice="marin",
    tools=[lookup_order, book_callback, hang_up, transfer_to_human],
    dtmf_to_model=True,
)
