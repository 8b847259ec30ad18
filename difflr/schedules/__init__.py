"""Learning-rate schedules for fine-tuning that Keras lacks.

They act on the base rate, so every multiplier's ratio is kept.
"""

from difflr.schedules.one_cycle import OneCycle
from difflr.schedules.slanted_triangular import SlantedTriangular

__all__ = ["OneCycle", "SlantedTriangular"]
