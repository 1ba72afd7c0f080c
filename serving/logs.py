"""Our log lines in Serve's replica logs, with the request id of the request being served.

Serve writes its replica log files (JSON lines with ``request_id``, deployment and replica)
through handlers on the ``ray.serve`` logger only, and that logger does not propagate. Our
modules log under ``qvq.*``; each replica makes ``qvq`` a child of ``ray.serve`` in its
constructor, so our records reach whatever handlers Serve has when they are written (Serve may
replace its handlers later, e.g. when the logging config changes), at Serve's log level. An
operator then finds one request's lines from the router, the preprocessor and the generator
with one search.
"""

from __future__ import annotations

import logging

SERVE_LOGGER = "ray.serve"


def route_to_serve_logs() -> None:
    serve_logger = logging.getLogger(SERVE_LOGGER)
    if not serve_logger.handlers:  # not inside a Serve replica (unit tests, the CLI)
        return
    for name in ("qvq", "vllm"):  # vLLM's records too (VLLM_CONFIGURE_LOGGING=0, engine_env)
        logger = logging.getLogger(name)
        logger.parent = serve_logger  # type: ignore[assignment]
        logger.setLevel(logging.NOTSET)  # Serve's level (logging_config.log_level) decides
        logger.propagate = True
