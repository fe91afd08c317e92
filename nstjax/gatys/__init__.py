"""The Gatys optimizer: pixels optimized against the perceptual objective, coarse to fine."""
from nstjax.gatys.optimizer import (GatysProblem, GatysResult, GatysSettings, Level, make_levels, run_gatys,
                                    stylize_pyramid)

__all__ = ["GatysProblem", "GatysResult", "GatysSettings", "Level", "make_levels", "run_gatys", "stylize_pyramid"]
