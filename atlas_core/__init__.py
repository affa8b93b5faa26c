"""MI-Atlas core: load a model, intervene on it, sweep, aggregate into an atlas, state claims."""

from .archmap import ArchMap, UnsupportedArchitecture
from .models import DEFAULT_MODEL, EMBEDDED
from .subject import ModelNotFound, Subject, load

__all__ = ["ArchMap", "DEFAULT_MODEL", "EMBEDDED", "ModelNotFound", "Subject", "UnsupportedArchitecture", "load"]
