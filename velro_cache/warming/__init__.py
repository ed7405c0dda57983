"""Cache warming: the application declares a plan, the library runs it by priority, within budgets.

    from velro_cache import warming

    warming.declare(warming.Plan([
        warming.Step("active_users", warm_active_users, priority=10, tiers={"l1"}),
        warming.Step("memberships", warm_memberships, priority=30, tiers={"l2"}),
    ], budget=20))

``warming.warm()`` runs it now (``manage.py velro_warm`` too);
``warming.warm_in_background()`` / the gunicorn hook / the ASGI lifespan
wrapper warm a worker as it starts; ``warming.results()`` says what was
warmed. At runtime, ``warming.preload(predictor, load)`` warms what a
user is about to read in the background and ``note_read`` scores it
(``predictor_results()``). See docs/warming.md.
"""

from .plan import L1, L2, Plan, Step, batches, declare, declared, undeclare
from .results import RunResult, StepResult, reset_results, results
from .run import ALL, WORKER, lock_key, warm
from .runtime import drain, note_read, predictor_results, preload
from .trigger import listen, trigger
from .worker import gunicorn_post_worker_init, lifespan, warm_in_background

__all__ = [
    "ALL",
    "L1",
    "L2",
    "WORKER",
    "Plan",
    "RunResult",
    "Step",
    "StepResult",
    "batches",
    "declare",
    "declared",
    "drain",
    "gunicorn_post_worker_init",
    "lifespan",
    "listen",
    "lock_key",
    "note_read",
    "predictor_results",
    "preload",
    "reset_results",
    "results",
    "trigger",
    "undeclare",
    "warm",
    "warm_in_background",
]
