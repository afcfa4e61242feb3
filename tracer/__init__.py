"""Trace events, the recorder, record/replay files and the Keras comparison."""
from nntrace.tracer.events import SCHEMA_VERSION, Event
from nntrace.tracer.recorder import NULL_TRACER, NullTracer, Recorder
from nntrace.tracer.trace import Trace, trace

__all__ = ["SCHEMA_VERSION", "Event", "NULL_TRACER", "NullTracer", "Recorder", "Trace", "trace"]
