"""Trace events, the recorder, record/replay files and the Keras comparison."""
from tracer.events import SCHEMA_VERSION, Event
from tracer.recorder import NULL_TRACER, NullTracer, Recorder
from tracer.trace import Trace, trace

__all__ = ["SCHEMA_VERSION", "Event", "NULL_TRACER", "NullTracer", "Recorder", "Trace", "trace"]
