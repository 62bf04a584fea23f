"""rayfly: Dragonfly-style peer-to-peer distribution of files, datasets and images on Ray."""

from rayfly.api import distribute
from rayfly.errors import RayflyError
from rayfly.protocol import NodeResult
from rayfly.report import Report

__all__ = ["NodeResult", "RayflyError", "Report", "distribute"]
__version__ = "0.1.0"
