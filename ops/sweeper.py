"""Moved to ops.stalls (inspect, classify, selectors, services).

Kept only for ops.consumers_background, whose import line belongs to a change in flight
elsewhere: point it at ops.stalls.selectors / ops.stalls.services, then delete this module.
Nothing new should import from here.
"""

from .stalls.selectors import FlagList, FlagRow, stall_flags_card_context
from .stalls.services import FLAGS_GROUP

__all__ = ["FLAGS_GROUP", "FlagList", "FlagRow", "stall_flags_card_context"]
