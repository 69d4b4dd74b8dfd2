"""`undiffuse serve`: the local web page (app.py), the requests it accepts (requests.py), the jobs it runs (jobs.py)."""
from .app import LOCAL_HOSTS, describe, make_app

__all__ = ["LOCAL_HOSTS", "describe", "make_app"]
