"""The API's routes, one module per concern. Each `make_*_router(state)` builds an APIRouter
over the app's `ServeState`: request models depend on the configured limits, so routes are
built per app.
"""
