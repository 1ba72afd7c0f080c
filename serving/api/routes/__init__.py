"""The OpenAI-compatible HTTP surface, one module per API resource: each builds a FastAPI
``APIRouter`` whose routes read the request, call the replica's services
(:class:`serving.api.services.ApiServices`) and answer. What every route shares (request scope,
error mapping, rate-limit headers, metrics) is :class:`serving.api.middleware.ApiMiddleware`;
request bodies are read by the routes themselves (capped before parsing) and declared for the
OpenAPI document at each route (:func:`serving.api.openapi.json_body`)."""
