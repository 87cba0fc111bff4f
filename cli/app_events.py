"""How a Gradio event of `cascadekit app` runs its job: in a worker thread with its own :class:`Job`, stopped at
its next sampling step when its request dies, its errors shown as messages.

A request dies three ways, each stopping only that request's work:

* its session's Cancel button (the ``/cancel_generate``-style endpoints: ``Sessions.cancel(session)``);
* Gradio cancelling the event (the page's Cancel sends ``/cancel`` for its own session; ``gradio_client``'s
  ``Job.cancel()`` does the same): the event's asyncio task is cancelled, which sets the job's flag here; the
  queue moves on at once, and the next job's thread waits for ``Sessions.device`` until this one stopped at its
  next step, so two jobs never run at once;
* its client disconnecting (the browser tab closed): Gradio marks the event dead, which ``Job.alive`` sees.

Gradio is imported lazily (an optional extra).
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect

from cascadekit.cli.app_jobs import JobCancelled, Sessions
from cascadekit.codec.errors import CascadeKitError, DependencyError
from cascadekit.metrics.errors import MetricsError


def gradio():
    try:
        import gradio as gr  # lazy: optional extra
    except ImportError:
        raise DependencyError("the app needs Gradio: pip install 'cascadekit[app]'") from None
    return gr


def session_of(request) -> str | None:
    """The Gradio session hash of a request (one per browser tab / gradio_client Client), None outside one."""
    return getattr(request, "session_hash", None)


def request_alive():
    """A check that is False once Gradio marked the event being processed dead (its client disconnected), or
    None outside an event."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    if blocks is None or event_id is None:
        return None

    def alive() -> bool:
        events = [e for job in blocks._queue.active_jobs if job for e in job if e._id == event_id]
        return all(e.alive for e in events)
    return alive


def job_event(sessions: Sessions):
    """Decorator for an event function ``fn(job, *inputs, progress=...)``: Gradio sees ``fn(*inputs, ...)``
    (the job is made per request, in the request's session); a user error (bad upload, bad setting, cancel)
    becomes a Gradio message, never a traceback."""
    def decorate(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        async def event(*args, **kwargs):
            from gradio.context import LocalContext

            with sessions.job(session_of(LocalContext.request.get(None)), request_alive()) as job:
                call = functools.partial(contextvars.copy_context().run, _on_device, sessions, fn, job, args, kwargs)
                work = asyncio.get_running_loop().run_in_executor(None, call)
                try:
                    return await asyncio.shield(work)
                except asyncio.CancelledError:  # Gradio cancelled the event: the work stops at its next step
                    job.cancel()
                    raise
                except JobCancelled:
                    raise gradio().Error("cancelled: the job stopped at its next step") from None
                except (CascadeKitError, MetricsError) as e:
                    raise gradio().Error(str(e)) from None

        event.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])
        return event
    return decorate


def _on_device(sessions: Sessions, fn, job, args, kwargs):
    """``fn(job, *args, **kwargs)`` in the worker thread, holding the device (not started once cancelled)."""
    with sessions.device:
        job.start()
        return fn(job, *args, **kwargs)


def cancel_event(sessions: Sessions):
    """The Cancel button's function: cancels the running job of the clicking session only."""
    gr = gradio()

    def cancel(request):
        sessions.cancel(session_of(request))

    cancel.__annotations__ = {"request": gr.Request}  # Gradio passes the request by this annotation
    return cancel
