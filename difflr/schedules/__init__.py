"""Learning-rate schedules for fine-tuning that Keras lacks.

Given as the wrapped optimizer's learning rate, they act on the base rate,
so every multiplier's ratio is kept. Given as a rule's value, a schedule is
the multiplier of its variables at each step (`Ramp`: a warm-up, a smooth
unfreezing).
"""

from difflr.schedules.one_cycle import OneCycle
from difflr.schedules.ramp import Ramp
from difflr.schedules.slanted_triangular import SlantedTriangular

__all__ = ["OneCycle", "Ramp", "SlantedTriangular"]
