"""``optscale serve``: an OpenAI-compatible adaptive-sampling proxy in front of any inference server.

Clients keep their OpenAI SDK and change only the base URL; each request becomes one
episode of the live engine (:mod:`optscale.live`): samples are drawn from the upstream,
scored, and the policy decides after every score how many more are needed. See docs/serve.md.
"""

from .app import create_app
from .settings import ServeConfig, build_serve_config

__all__ = ["create_app", "ServeConfig", "build_serve_config"]
