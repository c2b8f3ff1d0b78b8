"""optscale: probabilistically optimal inference-time scaling.

Choose, per problem, how many LLM samples Best-of-N needs: verifier scores are modelled as a
normal truncated to [0, 1], its parameters are estimated from a few samples, and the least N
that beats a target score with probability ``alpha`` follows in closed form.
"""

from .fit import FitFlag, FitResult, fit_map, fit_mle, moments_to_params
from .stats import min_samples

__version__ = "0.1.0"
__all__ = ["FitFlag", "FitResult", "fit_map", "fit_mle", "min_samples", "moments_to_params", "__version__"]
